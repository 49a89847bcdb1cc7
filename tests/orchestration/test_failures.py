"""Failures grouped (orchestration.failures and the admin's "Failures" page): the message
normalisation (SQL and Python agree), the grouping, the page (constant queries, fast at 10k
failures), "retry all in this group" (confirmation, reason, permission, bad input), and the
whole flow with a real worker: 20 instances failing with the same error but for their ids
are one group, and one press reruns them all."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db.models import Value
from django.test import Client
from django.utils import timezone

from orchestration import batch_runner, batches, engine, failures
from orchestration.batch_models import BatchOperation
from orchestration.errors import Conflict, NotAllowed
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for
from tests.orchestration.test_engine import run_ready
from tests.workflows import ledger

PAGE = "/admin/orchestration/failuregroupproxy/"
RETRY = "/admin/orchestration/failuregroupproxy/retry/"

CASES = [
    ("order 1234 not found", "order <n> not found"),
    ("order 98 not found", "order <n> not found"),
    ("timeout after 30.5 s", "timeout after <n> s"),
    (
        "instance 3f2b1c9e-1111-4222-8333-444455556666 is locked",
        "instance <uuid> is locked",
    ),
    ("mail to bob.smith+x@example.co.uk bounced", "mail to <email> bounced"),
    ("KeyError: 'amount'", "KeyError: <str>"),
    ('no such customer "ACME Ltd"', "no such customer <str>"),
    ("object at 0x7f3a2c1d9e80 is gone", "object at <hex> is gone"),
    ("commit deadbeef1234 missing", "commit <hex> missing"),
    ("commit deadbeefcafe stays a word", "commit deadbeefcafe stays a word"),
    ("due 2026-12-05T12:00:00.123+01:00 passed", "due <ts> passed"),
    ("due 2026-12-05 12:00 passed", "due <ts> passed"),
    ("", ""),
    ("naïve café 42 €", "naïve café <n> €"),
]


@pytest.mark.parametrize(("message", "expected"), CASES)
def test_normalise_message_replaces_the_variable_parts(message: str, expected: str) -> None:
    assert failures.normalise_message(message) == expected


@pytest.mark.django_db
def test_postgresql_and_python_normalise_alike() -> None:
    """The grouping in SQL and the Python fallback (SQLite) put messages in the same groups."""
    corpus = [m for m, _ in CASES] + [
        "HTTP 503 from https://api.example.com/v2/orders/77 after 3 tries",
        "user 'x' and \"y\" at 10:30",
        "abc123def456 ff00ff00 0XABC",
    ]
    from django.db import connection

    with connection.cursor() as cursor:
        for message in corpus:
            sql, params = _compile(failures.normalised_sql(Value(message)))
            cursor.execute(f"SELECT {sql}", params)
            assert cursor.fetchone()[0] == failures.normalise_message(message), message


def _compile(expression: Any) -> tuple[str, list[Any]]:
    from django.db import connection
    from django.db.models.sql import Query

    query = Query(WorkflowInstance)
    compiler = query.get_compiler(connection=connection)
    sql, params = expression.resolve_expression(query).as_sql(compiler, connection)
    return sql, list(params)


# -- grouping ------------------------------------------------------------------------------------


def failed_rows(
    n: int, *, workflow: str = "t_lookup", step: str = "lookup", message: str = "order {i} x"
) -> list[WorkflowInstance]:
    """Failed instances straight into the table (no engine), each failed ``i`` minutes ago."""
    now = timezone.now()
    rows = [
        WorkflowInstance(
            workflow=workflow,
            version=1,
            state="failed",
            input={"order": i},
            error={
                "step": step,
                "type": "orchestration.definitions.NonRetryableError",
                "message": message.format(i=i, id=uuid.uuid4()),
                "traceback": "",
            },
            created_at=now - timedelta(minutes=i + 1),
            updated_at=now - timedelta(minutes=i),
            finished_at=now - timedelta(minutes=i),
        )
        for i in range(n)
    ]
    return WorkflowInstance.objects.bulk_create(rows)


def _groups(user: Any) -> list[failures.FailureGroup]:
    return failures.failure_groups(user=user)[0]


@pytest.mark.django_db
@pytest.mark.parametrize("python", [False, True], ids=["postgresql", "python fallback"])
def test_failures_group_by_workflow_step_type_and_normalised_message(
    admin_user: Any, monkeypatch: pytest.MonkeyPatch, python: bool
) -> None:
    if python:
        monkeypatch.setattr(failures.vendor, "is_postgresql", lambda *a: False)
    lookups = failed_rows(12, message="order {i} not found (request {id})")
    failed_rows(3, step="ship", message="carrier {id} refused")
    failed_rows(2, workflow="t_sequence", message="order {i} not found (request {id})")
    groups = _groups(admin_user)
    assert [(g.workflow, g.step, g.count) for g in groups] == [
        ("t_lookup", "lookup", 12),
        ("t_lookup", "ship", 3),
        ("t_sequence", "lookup", 2),
    ]
    top = groups[0]
    assert top.message == "order <n> not found (request <uuid>)"
    assert top.error_type == "orchestration.definitions.NonRetryableError"
    # The sample is the most recent failure; first and last seen span the group.
    assert top.sample_id == lookups[0].pk
    assert top.last_seen == lookups[0].finished_at
    assert top.first_seen == lookups[-1].finished_at
    members = failures.group_instances(user=admin_user, key=top.key)
    assert {i.pk for i in members} == {i.pk for i in lookups}
    assert failures.group_of(user=admin_user, key=top.key).count == 12


@pytest.mark.django_db
def test_the_group_filter_names_the_batch_filter(admin_user: Any) -> None:
    failed_rows(2, message="order {i} not found")
    key = _groups(admin_user)[0].key
    assert failures.group_filter(key) == {
        "workflow": "t_lookup",
        "state": "failed",
        "failed_step": "lookup",
        "error_type": "orchestration.definitions.NonRetryableError",
        "error_message_normalised": "order <n> not found",
    }
    narrowed = failures.message_filter(WorkflowInstance.objects.all(), "order <n> not found")
    assert narrowed.count() == 2


@pytest.mark.django_db
def test_only_failed_instances_count_and_groups_are_capped(admin_user: Any) -> None:
    failed_rows(3, message="error {id}")
    WorkflowInstance.objects.filter(pk__in=[WorkflowInstance.objects.first().pk]).update(
        state="succeeded"
    )
    for i in range(4):
        failed_rows(1, step=f"s{i}", message="x")
    groups, more = failures.failure_groups(user=admin_user, limit=3)
    assert len(groups) == 3 and more
    assert sum(g.count for g in _groups(admin_user)) == 6


@pytest.mark.parametrize(
    "token",
    ["", "not base64 !!", "W10", "WyJhIl0", "eyJhIjogMX0", "WyIiLCAiIiwgIiIsICIiXQ"],
    ids=["empty", "garbage", "empty list", "one part", "an object", "no workflow"],
)
def test_a_bad_group_token_is_invalid_input(token: str) -> None:
    with pytest.raises(failures.InvalidInput):
        failures.GroupKey.from_token(token)


def test_a_group_key_round_trips_through_its_token() -> None:
    key = failures.GroupKey("wf", "step", "x.Error", 'it\'s <n> "quoted" ünïcode')
    assert failures.GroupKey.from_token(key.token) == key


# -- the page -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_failures_page_lists_the_groups_in_constant_queries(
    admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    failed_rows(3, message="order {i} not found")
    with django_assert_max_num_queries(12) as few:
        response = admin_client.get(PAGE)
    assert response.status_code == 200
    failed_rows(60, step="ship", message="carrier {id} refused")
    failed_rows(40, workflow="t_sequence", message="boom {i}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(PAGE)
    html = response.content.decode()
    assert html.count('class="so-group"') == 3
    assert "carrier &lt;uuid&gt; refused" in html
    assert "Retry all in this group" in html
    assert 'data-count="60"' in html


@pytest.mark.django_db
def test_the_failures_page_stays_fast_at_10k_failed_instances(
    admin_user: Any, admin_client: Client
) -> None:
    tenants = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()
    for batch, tenant in enumerate(tenants):
        failed_rows(
            1000,
            step=f"step_{batch % 4}",
            message="order {i} not found at 2026-12-05T10:00:00Z for " + tenant + " {id}",
        )
    started = time.perf_counter()
    groups, _ = failures.failure_groups(user=admin_user)
    grouping = time.perf_counter() - started
    started = time.perf_counter()
    response = admin_client.get(PAGE)
    page = time.perf_counter() - started
    assert response.status_code == 200
    assert sum(g.count for g in groups) == 10_000 and len(groups) == 10
    print(f"\n10k failed instances: grouping {grouping * 1000:.0f} ms, page {page * 1000:.0f} ms")
    assert grouping < 2.0 and page < 3.0


@pytest.mark.django_db
def test_the_failures_page_is_for_those_who_may_view_instances(
    django_user_model: Any, client: Client
) -> None:
    failed_rows(1)
    sam = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    client.force_login(sam)
    assert client.get(PAGE).status_code == 403
    sam.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    client.force_login(django_user_model.objects.get(pk=sam.pk))
    response = client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="so-group"' in html and "Retry all in this group" not in html
    # The admin's index lists the page for them.
    assert PAGE in client.get("/admin/").content.decode()


# -- retry all in a group -------------------------------------------------------------------------


def _fail_lookups(n: int, user: Any) -> list[WorkflowInstance]:
    """``n`` t_lookup instances failed in-process (the engine, no worker)."""
    ledger().delete("fixed:t_lookup")
    out = []
    for i in range(n):
        instance, _ = engine.instance_start(
            workflow="t_lookup", input={"order": 1000 + i}, started_by=user
        )
        run_ready(instance)
        out.append(WorkflowInstance.objects.get(pk=instance.pk))
    assert {i.state for i in out} == {"failed"}
    return out


def _state() -> tuple:
    return (
        sorted(WorkflowInstance.objects.values_list("state", flat=True)),
        Event.objects.count(),
    )


@pytest.mark.django_db
def test_retry_all_asks_first_with_the_count_then_retries_with_the_reason(
    admin_user: Any, admin_client: Client, rung: list
) -> None:
    lookups = _fail_lookups(3, admin_user)
    key = _groups(admin_user)[0].key
    url = f"{RETRY}?group={key.token}"
    before = _state()
    page = admin_client.get(url)
    assert page.status_code == 200
    assert "This applies to <strong>3</strong>" in page.content.decode()
    # No reason: the form again (400), nothing retried.
    refused = admin_client.post(url, {"confirm": "1", "reason": "  "})
    assert refused.status_code == 400 and _state() == before
    done = admin_client.post(url, {"confirm": "1", "reason": "fixed the order lookup"})
    assert done.status_code == 302 and done["Location"] == PAGE
    # The batch runs in the background (here: its chunk, as the worker would run it).
    batch_runner.batch_run_chunk(batch_id=BatchOperation.objects.get().pk)
    for instance in lookups:
        assert WorkflowInstance.objects.get(pk=instance.pk).state == "running"
        event = Event.objects.get(instance=instance, type="instance_retried")
        assert event.data == {"reason": "fixed the order lookup"}
        assert event.actor == f"user:{admin_user.username}"
    # The group is empty now: the retry page says so and goes back.
    again = admin_client.get(url)
    assert again.status_code == 302


@pytest.mark.django_db
def test_retry_all_refuses_viewers_and_bad_groups(
    admin_user: Any, django_user_model: Any, client: Client, admin_client: Client, rung: list
) -> None:
    _fail_lookups(2, admin_user)
    key = _groups(admin_user)[0].key
    vera = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    vera.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    client.force_login(vera)
    before = _state()
    post = {"confirm": "1", "reason": "go"}
    assert client.post(f"{RETRY}?group={key.token}", post).status_code == 403
    assert client.get(f"{RETRY}?group={key.token}").status_code == 403
    assert admin_client.post(f"{RETRY}?group=%%%", post).status_code == 400
    assert admin_client.post(RETRY, post).status_code == 400
    assert admin_client.put(f"{RETRY}?group={key.token}").status_code == 405
    # A group nobody is in: back to the page with a note.
    ghost = failures.GroupKey("t_lookup", "lookup", "x", "nothing")
    assert admin_client.post(f"{RETRY}?group={ghost.token}", post).status_code == 302
    assert _state() == before


@pytest.mark.django_db
def test_retry_group_starts_one_batch_over_the_groups_failed_instances(
    admin_user: Any, rung: list
) -> None:
    lookups = _fail_lookups(3, admin_user)
    key = _groups(admin_user)[0].key
    # One of them is cancelled meanwhile by someone else: only the still failed are selected.
    engine.instance_cancel(instance_id=lookups[0].pk, actor="system")
    job = failures.retry_group(key, admin_user, "after the fix")
    assert isinstance(job, BatchOperation)
    assert (job.action, job.state, job.total, job.reason) == ("retry", "queued", 2, "after the fix")
    assert job.filter == failures.group_filter(key)
    assert sorted(job.items.values_list("instance_id", flat=True)) == sorted(
        i.pk for i in lookups[1:]
    )
    # A second press while the first batch holds them: refused, nothing more written.
    with pytest.raises(Conflict):
        failures.retry_group(key, admin_user, "again")
    assert BatchOperation.objects.count() == 1
    for bad in (" ", "x" * 1001, None):
        with pytest.raises(failures.InvalidInput):
            failures.retry_group(key, admin_user, bad)
    assert BatchOperation.objects.count() == 1


@pytest.mark.django_db
def test_the_group_filter_selects_only_the_groups_message(admin_user: Any, rung: list) -> None:
    _fail_lookups(2, admin_user)
    key = _groups(admin_user)[0].key
    same = batches.matching_instances(batches.normalise_filter(failures.group_filter(key)))
    assert same.count() == 2
    other = failures.GroupKey(key.workflow, key.step, key.error_type, "another message")
    assert (
        batches.matching_instances(batches.normalise_filter(failures.group_filter(other))).count()
        == 0
    )


@pytest.mark.django_db
def test_the_retry_page_starts_a_batch_and_links_it(
    admin_user: Any, admin_client: Client, rung: list
) -> None:
    """One press starts one batch operation (the page links it); a second press while it
    holds the same instances comes back as a refusal and starts nothing."""
    _fail_lookups(2, admin_user)
    key = _groups(admin_user)[0].key
    url = f"{RETRY}?group={key.token}"
    response = admin_client.post(url, {"confirm": "1", "reason": "fixed"}, follow=True)
    job = BatchOperation.objects.get()
    texts = [str(m) for m in response.context["messages"]]
    assert texts == [
        f'Retry of 2 instance(s) started as <a href="/admin/orchestration/batchoperation/'
        f'{job.pk}/change/">batch operation {job.pk}</a>.'
    ]
    response = admin_client.post(url, {"confirm": "1", "reason": "fixed"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert len(texts) == 1 and texts[0].startswith("Refused: ")
    assert BatchOperation.objects.count() == 1


@pytest.mark.django_db
def test_retry_group_needs_the_operate_permission(django_user_model: Any, rung: list) -> None:
    vera = django_user_model.objects.create_user("vera", is_staff=True)
    key = failures.GroupKey("t_lookup", "lookup", "x", "y")
    with pytest.raises(NotAllowed):
        failures.retry_group(key, vera, "why")


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_twenty_failures_of_one_bug_are_one_group_and_one_press_reruns_them(
    worker: Any, django_user_model: Any
) -> None:
    ops = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-123")
    ledger().delete("fixed:t_lookup")
    started = [
        engine.instance_start(workflow="t_lookup", input={"order": 500 + i}, started_by=ops)[0]
        for i in range(20)
    ]
    ids = [i.pk for i in started]

    def all_in(state: str) -> bool:
        return WorkflowInstance.objects.filter(pk__in=ids, state=state).count() == 20

    wait_for(lambda: all_in("failed"), timeout=60, message="20 failures")
    groups = _groups(ops)
    assert [(g.workflow, g.step, g.count) for g in groups] == [("t_lookup", "lookup", 20)]
    assert groups[0].message == "order <n> not found (request <uuid>)"

    client = Client()
    client.force_login(ops)
    page = client.get(PAGE).content.decode()
    assert 'data-count="20"' in page
    ledger().set("fixed:t_lookup", "1")  # the bug fix is deployed
    try:
        response = client.post(
            f"{RETRY}?group={groups[0].key.token}", {"confirm": "1", "reason": "lookup fixed"}
        )
        assert response.status_code == 302
        wait_for(lambda: all_in("succeeded"), timeout=60, sweep=True, message="20 reruns")
    finally:
        ledger().delete("fixed:t_lookup")
    for pk in ids:
        runs = ledger().hgetall(f"ledger:{pk}")
        # The lookup ran once as attempt 1 (failed) and once as attempt 2 (the retry).
        assert runs == {b"lookup:1": b"1", b"lookup:2": b"1", b"ship:1": b"1"}, runs
        assert Event.objects.filter(instance_id=pk, type="instance_retried").count() == 1
    assert failures.failure_groups(user=ops)[0] == []
    assert StepRun.objects.filter(instance_id__in=ids, state="succeeded").count() == 40


@pytest.mark.django_db
def test_a_failure_opens_as_its_instance_page(
    admin_client: Client, django_user_model: Any, client: Client
) -> None:
    row = failed_rows(1)[0]
    response = admin_client.get(f"{PAGE}{row.pk}/change/")
    assert response.status_code == 200 and str(row.pk) in response.content.decode()
    sam = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    client.force_login(sam)
    assert client.get(f"{PAGE}{row.pk}/change/").status_code == 403
