"""Sealed payloads: encrypted at rest, opened only to run a step or for those allowed."""

from __future__ import annotations

import re

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission
from django.db import connection
from rest_framework.test import APIClient

from orchestration import engine, sealing
from orchestration.definitions import DefinitionError, Registry, Workflow, registry
from orchestration.models import StepRun
from tests.orchestration.test_engine import refresh, run_ready, steps_of

pytestmark = pytest.mark.django_db
SECRET_IBAN = "DE89370400440532013000"
SECRET_TOKEN = "tok_live_very_secret"


def _use(ctx):  # noqa: ANN001, ANN202
    return {"iban_tail": ctx.input["iban"][-4:], "api_token": SECRET_TOKEN}


def _after(ctx):  # noqa: ANN001, ANN202
    return {"token_seen": ctx.outputs["use"]["api_token"] == SECRET_TOKEN}


@pytest.fixture
def keys(settings):
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SIGNOFF_ENCRYPTION_KEYS = first
    sealing._keys_from.cache_clear()
    yield settings, first, second
    sealing._keys_from.cache_clear()


@pytest.fixture
def sealed_flow(keys):
    wf = Workflow("t_sealed", sensitive=["input.iban", "outputs.use.api_token"])
    wf.task(_use, name="use")
    wf.task(_after, name="after", after=["use"])
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)


def raw(sql: str, *params) -> str:  # noqa: ANN002
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return " ".join(str(row) for row in cursor.fetchall())


def test_sensitive_fields_are_encrypted_in_the_raw_columns(sealed_flow) -> None:
    instance, _ = engine.instance_start(
        workflow="t_sealed", input={"iban": SECRET_IBAN, "name": "Ada"}
    )
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    rows = raw("SELECT input::text, request_hash FROM orchestration_workflowinstance")
    rows += raw("SELECT output::text FROM orchestration_steprun")
    rows += raw("SELECT output::text FROM orchestration_workflowinstance")
    assert SECRET_IBAN not in rows and "0532013000" not in rows
    assert SECRET_TOKEN not in rows
    assert "Ada" in rows  # not sensitive: plain
    steps = steps_of(instance)
    assert steps["use"].output["iban_tail"] == "3000"  # the step saw the plain value
    assert steps["after"].output == {"token_seen": True}


def test_api_masks_lists_and_reveals_only_with_permission(sealed_flow, staff) -> None:
    instance, _ = engine.instance_start(workflow="t_sealed", input={"iban": SECRET_IBAN})
    run_ready(instance)
    client = APIClient()
    client.force_authenticate(staff)
    listed = client.get("/api/v1/instances/?workflow=t_sealed").json()["results"][0]
    assert listed["input"]["iban"] == sealing.MASK
    detail = client.get(f"/api/v1/instances/{instance.pk}/").json()
    assert detail["input"]["iban"] == sealing.MASK
    staff.user_permissions.add(Permission.objects.get(codename="view_sensitive"))
    staff = type(staff).objects.get(pk=staff.pk)
    client.force_authenticate(staff)
    detail = client.get(f"/api/v1/instances/{instance.pk}/").json()
    assert detail["input"]["iban"] == SECRET_IBAN
    use = next(s for s in detail["steps"] if s["name"] == "use")
    assert use["output"]["api_token"] == SECRET_TOKEN
    listed = client.get("/api/v1/instances/?workflow=t_sealed").json()["results"][0]
    assert listed["input"]["iban"] == sealing.MASK


def test_rotation_reencrypts_and_old_keys_can_go(sealed_flow, keys) -> None:
    from io import StringIO

    from django.core.management import call_command

    settings, first, second = keys
    instance, _ = engine.instance_start(workflow="t_sealed", input={"iban": SECRET_IBAN})
    run_ready(instance)
    settings.SIGNOFF_ENCRYPTION_KEYS = f"{second},{first}"
    sealing._keys_from.cache_clear()
    out = StringIO()
    call_command("signoff", "rotate-keys", stdout=out)
    assert "re-encrypted" in out.getvalue()
    settings.SIGNOFF_ENCRYPTION_KEYS = second  # the old key is gone
    sealing._keys_from.cache_clear()
    stored = refresh(instance).input["iban"]
    assert sealing.open_value(stored) == SECRET_IBAN
    use = StepRun.objects.get(instance=instance, name="use")
    assert sealing.open_value(use.output["api_token"]) == SECRET_TOKEN


def test_wrong_key_is_a_clear_error_never_an_empty_value(sealed_flow, keys) -> None:
    settings, first, second = keys
    instance, _ = engine.instance_start(workflow="t_sealed", input={"iban": SECRET_IBAN})
    settings.SIGNOFF_ENCRYPTION_KEYS = second
    sealing._keys_from.cache_clear()
    with pytest.raises(sealing.SealError, match="none of the keys"):
        sealing.open_value(refresh(instance).input["iban"], where="input.iban")
    step = steps_of(instance)["use"]
    assert engine.step_execute(step_run_id=step.pk, attempt=1) == "stale"
    step = steps_of(instance)["use"]
    assert step.state == "retrying"
    assert step.error["type"] == "signoff.SealError"
    assert "SIGNOFF_ENCRYPTION_KEYS" in step.error["message"]
    shown = sealing.reveal(refresh(instance).input)
    assert shown["iban"].startswith("[sealed value not readable")


def test_bad_sensitive_paths_are_refused() -> None:
    wf = Workflow("t_sealed_bad", sensitive=["outputs.ghost.x"])
    wf.task(_use, name="use")
    with pytest.raises(DefinitionError, match="sensitive path 'outputs.ghost.x'"):
        Registry().register(wf)


def test_approval_fields_mask_sensitive_values(keys, django_user_model) -> None:
    from approvals.definitions import approval
    from approvals.models import ApprovalRequest

    django_user_model.objects.create_user("ann")
    wf = Workflow("t_sealed_approval", sensitive=["input.salary"])
    approval(wf, "decide", users=["ann"], show=["input.salary", "input.name"])
    registry.register(wf)
    try:
        instance, _ = engine.instance_start(
            workflow="t_sealed_approval", input={"salary": 123456, "name": "Ada"}
        )
        request = ApprovalRequest.objects.get(instance=instance)
        assert request.fields == [
            {"label": "Salary", "value": sealing.MASK},
            {"label": "Name", "value": "Ada"},
        ]
    finally:
        registry.unregister(wf.name, wf.version)


def test_erase_by_business_key_removes_sensitive_values_and_says_so(sealed_flow) -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from orchestration.models import Event

    instance, _ = engine.instance_start(
        workflow="t_sealed", input={"iban": SECRET_IBAN}, business_key="customer-42"
    )
    run_ready(instance)
    out = StringIO()
    call_command("signoff", "erase", "--business-key", "customer-42", stdout=out)
    assert "erased 2 sensitive field(s) in 1 instance(s)" in out.getvalue()
    instance = refresh(instance)
    assert instance.input["iban"] == "[erased]" and instance.erased_at is not None
    assert steps_of(instance)["use"].output["api_token"] == "[erased]"
    event = Event.objects.get(instance=instance, type="instance_erased")
    assert event.data == {"fields": 2, "copies": 0, "reason": "erasure request"}
    assert SECRET_IBAN not in str(event.data)
    with pytest.raises(CommandError, match="not_found"):
        call_command("signoff", "erase", "--business-key", "nobody", stdout=StringIO())


def test_retention_erases_then_deletes_finished_instances(keys) -> None:
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    from orchestration.models import Event, WorkflowInstance
    from orchestration.retention import sweep_retention

    wf = Workflow(
        "t_retained",
        sensitive=["input.iban"],
        retention=timedelta(days=30),
        delete_after=timedelta(days=60),
    )
    wf.task(_use, name="use")
    registry.register(wf)
    try:
        start = timezone.now()
        with time_machine.travel(start, tick=False):
            done, _ = engine.instance_start(workflow="t_retained", input={"iban": SECRET_IBAN})
            run_ready(done)
            running, _ = engine.instance_start(workflow="t_retained", input={"iban": "X"})
        with time_machine.travel(start + timedelta(days=29), tick=False):
            assert sweep_retention() == {"erased": 0, "deleted": 0}
        with time_machine.travel(start + timedelta(days=31), tick=False):
            assert sweep_retention() == {"erased": 1, "deleted": 0}
            assert sweep_retention() == {"erased": 0, "deleted": 0}
        assert refresh(done).input["iban"] == "[erased]"
        assert refresh(running).input["iban"] != "[erased]"  # unfinished: kept
        with time_machine.travel(start + timedelta(days=91), tick=False):
            assert sweep_retention() == {"erased": 0, "deleted": 1}
        assert not WorkflowInstance.objects.filter(pk=done.pk).exists()
        assert not Event.objects.filter(instance_id=done.pk).exists()
        assert WorkflowInstance.objects.filter(pk=running.pk).exists()
    finally:
        registry.unregister(wf.name, wf.version)


# -- sealing at the source (issue 11: items 7, 8 and 9) -------------------------------------------

CARD = "4111-1111-1111-1111"
CODE = "callback-code-93xq"


def _charge(ctx):  # noqa: ANN001, ANN202
    if ctx.attempt == 1:
        raise ValueError(f"card {ctx.input['card']} was declined")
    return {"charge_id": "ch_1"}


@pytest.fixture
def card_flow(keys, django_user_model):  # noqa: ANN001, ANN201
    """charge (fails once quoting the card) → approve (title and fields from the card) →
    callback (a signal whose ``code`` is sealed)."""
    from datetime import timedelta

    from approvals.definitions import approval
    from orchestration.definitions import RetryPolicy
    from orchestration.waits import signal_step

    ann = django_user_model.objects.create_user("ann", email="ann@example.com", password="pw")
    wf = Workflow("t_sealed_card", sensitive=["input.card", "outputs.callback.code"])
    wf.task(
        _charge,
        name="charge",
        retry=RetryPolicy(
            max_attempts=2, initial_interval=timedelta(0), max_interval=timedelta(0), jitter=0
        ),
    )
    approval(
        wf,
        "approve",
        after=["charge"],
        users=["ann"],
        title="Card {input[card]} for {input[name]}",
        show=["input.card", "input.name", "input.meta"],
    )
    signal_step(wf, "callback", after=["approve"])
    registry.register(wf)
    yield ann
    registry.unregister(wf.name, wf.version)


def _start_card(**kwargs):  # noqa: ANN003, ANN202
    instance, _ = engine.instance_start(
        workflow="t_sealed_card",
        input={"card": CARD, "name": "Ada", "meta": {"api_key": "k-123456", "plan": "gold"}},
        **kwargs,
    )
    run_ready(instance)
    return instance


def test_a_title_formatted_from_a_sealed_field_is_masked_everywhere_it_goes(
    card_flow, django_capture_on_commit_callbacks, monkeypatch, client
) -> None:
    """Item 7: the title is rendered masked, so the API, the event, the mail, the inbox and the
    webhook payload carry the mask."""
    from approvals.models import ApprovalRequest
    from integrations import webhooks
    from integrations.models import OutboundEmail, WebhookDelivery, WebhookSubscription
    from orchestration.models import Event

    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: None)
    WebhookSubscription.objects.create(name="all", url="http://127.0.0.1:9/hook")
    with django_capture_on_commit_callbacks(execute=True):
        instance = _start_card()
    request = ApprovalRequest.objects.get(instance=instance)
    assert request.title == f"Card {sealing.MASK} for Ada"
    assert request.fields[0] == {"label": "Card", "value": sealing.MASK}
    event = Event.objects.get(instance=instance, type="approval_requested")
    assert event.data["title"] == request.title
    mail = OutboundEmail.objects.get(instance_id=instance.pk)
    assert sealing.MASK in mail.subject
    delivery = WebhookDelivery.objects.get(instance_id=instance.pk, event_type="approval_requested")
    assert delivery.payload["data"]["title"] == request.title
    api = APIClient()
    api.force_authenticate(card_flow)
    approvals_api = api.get("/api/v1/approvals/").content.decode()
    client.force_login(card_flow)
    pages = (
        client.get("/inbox/").content.decode()
        + client.get(f"/inbox/{request.pk}/").content.decode()
    )
    stored = raw("SELECT title || fields::text FROM approvals_approvalrequest")
    stored += raw("SELECT data::text FROM orchestration_event")
    stored += raw("SELECT subject || body_text || body_html FROM integrations_outboundemail")
    stored += raw("SELECT payload::text FROM integrations_webhookdelivery")
    for text in (stored, approvals_api, pages):
        assert CARD not in text
        assert "Ada" in text  # what is not sealed still shows


def test_a_step_error_quoting_a_sealed_value_is_stored_scrubbed(card_flow) -> None:
    """Item 8 at the source: the failed attempt's message and traceback, its event and its
    webhook copy hold the mask, never the card."""
    from orchestration.models import Event

    instance = _start_card()
    retried = Event.objects.get(instance=instance, type="step_retrying")
    assert retried.data["error"]["message"] == f"card {sealing.MASK} was declined"
    assert CARD not in retried.data["error"]["traceback"]
    assert "ValueError" in retried.data["error"]["traceback"]  # still useful
    assert CARD not in raw("SELECT error::text FROM orchestration_steprun")


def test_a_failing_step_and_a_broken_predicate_fail_scrubbed(keys) -> None:
    from orchestration.models import Event, WorkflowInstance

    def boom(ctx):  # noqa: ANN001, ANN202
        raise NonRetryable(f"no such iban {ctx.input['iban']}")

    def when(ctx):  # noqa: ANN001, ANN202
        raise KeyError(ctx.input["iban"])

    from orchestration.definitions import NonRetryableError as NonRetryable

    wf = Workflow("t_sealed_errors", sensitive=["input.iban"])
    wf.task(boom, name="boom")
    wf.task(_use, name="guarded", when=when)
    registry.register(wf)
    try:
        instance, _ = engine.instance_start(workflow="t_sealed_errors", input={"iban": SECRET_IBAN})
        run_ready(instance)
        instance = WorkflowInstance.objects.get(pk=instance.pk)
        assert instance.state == "failed"
        assert SECRET_IBAN not in str(instance.error)
        everything = raw("SELECT error::text FROM orchestration_steprun")
        everything += raw("SELECT data::text FROM orchestration_event")
        assert SECRET_IBAN not in everything
        assert Event.objects.filter(instance=instance, type="step_failed").exists()
    finally:
        registry.unregister(wf.name, wf.version)


def test_a_pending_signal_payload_is_sealed_until_a_step_consumes_it(card_flow, staff) -> None:
    from approvals import services
    from approvals.models import ApprovalRequest
    from orchestration.models import Signal
    from orchestration.waits import signal_send

    instance = _start_card()
    signal, applied = signal_send(
        instance_id=instance.pk,
        name="callback",
        payload={"code": CODE, "note": "ok"},
        idempotency_key="cb-1",
    )
    assert applied and sealing.is_sealed(Signal.objects.get(pk=signal.pk).payload)
    assert CODE not in raw("SELECT payload::text FROM orchestration_signal")
    # A repeat with the same key and body is recognised through the seal.
    assert signal_send(
        instance_id=instance.pk,
        name="callback",
        payload={"code": CODE, "note": "ok"},
        idempotency_key="cb-1",
    ) == (signal, False)
    request = ApprovalRequest.objects.get(instance=instance)
    services.approval_decide(request_id=request.pk, user=card_flow, outcome="approve")
    callback = steps_of(instance)["callback"]
    assert callback.state == "succeeded"
    assert sealing.is_sealed(callback.output["code"]) and callback.output["note"] == "ok"
    assert sealing.open_value(callback.output["code"]) == CODE
    assert CODE not in raw("SELECT output::text FROM orchestration_steprun")
    # The sender reads the payload back masked.
    api = APIClient()
    api.force_authenticate(staff)
    response = api.post(
        f"/api/v1/instances/{instance.pk}/signals/callback/",
        {"code": CODE},
        format="json",
        HTTP_IDEMPOTENCY_KEY="cb-2",
    )
    assert CODE not in response.content.decode()


def test_api_masks_secret_looking_keys_in_detail_list_and_history_like_the_pages(
    card_flow, staff
) -> None:
    """Item 9: one door (``sealing.masked``) for the API, the status page, the admin and the
    history; ``view_sensitive`` still opens sealed fields in the API detail."""
    instance = _start_card()
    api = APIClient()
    api.force_authenticate(staff)
    detail = api.get(f"/api/v1/instances/{instance.pk}/").json()
    listed = api.get("/api/v1/instances/?workflow=t_sealed_card").json()["results"][0]
    for shown in (detail, listed):
        assert shown["input"]["meta"] == {"api_key": sealing.MASK, "plan": "gold"}
        assert shown["input"]["card"] == sealing.MASK
    history = api.get(f"/api/v1/instances/{instance.pk}/history/").content.decode()
    assert "k-123456" not in history and CARD not in history
    status_page = APIClient()
    status_page.force_login(staff)
    assert "k-123456" not in status_page.get(f"/instances/{instance.pk}/").content.decode()
    staff.user_permissions.add(Permission.objects.get(codename="view_sensitive"))
    api.force_authenticate(type(staff).objects.get(pk=staff.pk))
    detail = api.get(f"/api/v1/instances/{instance.pk}/").json()
    assert detail["input"]["card"] == CARD
    assert detail["input"]["meta"]["api_key"] == "k-123456"
    listed = api.get("/api/v1/instances/?workflow=t_sealed_card").json()["results"][0]
    assert listed["input"]["card"] == sealing.MASK  # lists never open


def test_the_inbox_request_page_shows_the_show_fields_and_decisions_not_input_or_event_data(
    card_flow, client
) -> None:
    """Item 9: an assignee sees the step's ``show=`` fields (masked where sealed or secret-
    looking) and the decision history; not the instance input nor event data."""
    from approvals.models import ApprovalRequest

    instance = _start_card()
    request = ApprovalRequest.objects.get(instance=instance)
    client.force_login(card_flow)
    html = client.get(f"/inbox/{request.pk}/").content.decode()
    assert "<dt>Name</dt><dd>Ada</dd>" in html
    assert "<dt>Card</dt><dd>" + sealing.MASK in html
    assert "k-123456" not in html  # meta is shown, its api_key masked
    assert "gold" in html
    assert "Input" not in html and "was declined" not in html  # no input, no event data
    assert "approval_requested" in html  # the history's outline stays
    assert "No decisions yet." in html


def test_erase_covers_signals_errors_titles_comments_events_mail_and_webhooks(
    card_flow, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    """Item 8: after ``signoff erase`` no row of any app holds the card or the code, even rows
    written before sealing at the source or typed by people (a comment quoting the card), and
    no sealed value of the subject is left to open."""
    from io import StringIO

    from django.core.management import call_command

    from approvals import services
    from approvals.models import ApprovalRequest, Decision
    from integrations import webhooks
    from integrations.models import OutboundEmail, WebhookDelivery, WebhookSubscription
    from orchestration.models import Event, Signal

    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: None)
    WebhookSubscription.objects.create(name="all", url="http://127.0.0.1:9/hook")
    with django_capture_on_commit_callbacks(execute=True):
        instance = _start_card(business_key="subject-7")
        from orchestration.waits import signal_send

        signal_send(instance_id=instance.pk, name="callback", payload={"code": CODE})
        request = ApprovalRequest.objects.get(instance=instance)
        services.approval_decide(
            request_id=request.pk,
            user=card_flow,
            outcome="approve",
            comment=f"checked card {CARD} by phone",
        )
    # Rows as an older release wrote them: plaintext copies in the title, the mail, an event.
    ApprovalRequest.objects.filter(pk=request.pk).update(title=f"Card {CARD} for Ada")
    OutboundEmail.objects.filter(instance_id=instance.pk).update(body_text=f"card {CARD}")
    Event.objects.filter(instance=instance, type="approval_requested").update(
        data={"title": f"Card {CARD}"}
    )
    assert WebhookDelivery.objects.filter(instance_id=instance.pk).exists()
    subject_rows = (
        "SELECT input::text || coalesce(output::text, '') || coalesce(error::text, '') "
        "FROM orchestration_workflowinstance",
        "SELECT coalesce(output::text, '') || coalesce(error::text, '') FROM orchestration_steprun",
        "SELECT payload::text FROM orchestration_signal",
        "SELECT data::text FROM orchestration_event",
        "SELECT title || fields::text FROM approvals_approvalrequest",
        "SELECT comment || reason FROM approvals_decision",
        "SELECT subject || body_text || body_html FROM integrations_outboundemail",
        "SELECT payload::text FROM integrations_webhookdelivery",
    )
    before = " ".join(raw(sql) for sql in subject_rows)
    assert CARD in before  # the copies are there to erase

    out = StringIO()
    call_command("signoff", "erase", "--business-key", "subject-7", stdout=out)
    assert "in 1 instance(s)" in out.getvalue()

    after = " ".join(raw(sql) for sql in subject_rows)
    assert CARD not in after and CODE not in after
    for sql in subject_rows:
        for token in re.findall(r'"\$sealed": "([^"]+)"', raw(sql)):
            pytest.fail(f"a sealed value is left after erase: {token[:20]}...")
    assert not WebhookDelivery.objects.filter(instance_id=instance.pk).exists()
    assert Signal.objects.get(instance=instance).payload == "[erased]"
    assert "by phone" in Decision.objects.get(request=request).comment  # the rest stays
    erased = Event.objects.get(instance=instance, type="instance_erased")
    assert erased.data["copies"] > 0 and CARD not in str(erased.data)


def test_retention_deletes_mail_and_webhook_deliveries_through_hooks(
    keys, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    from integrations import webhooks
    from integrations.models import OutboundEmail, WebhookDelivery, WebhookSubscription
    from orchestration.retention import sweep_retention

    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: None)
    WebhookSubscription.objects.create(name="all", url="http://127.0.0.1:9/hook")
    wf = Workflow(
        "t_retained_hooks",
        sensitive=["input.iban"],
        retention=timedelta(days=1),
        delete_after=timedelta(days=1),
    )
    wf.task(_use, name="use")
    registry.register(wf)
    try:
        start = timezone.now()
        with time_machine.travel(start, tick=False):
            with django_capture_on_commit_callbacks(execute=True):
                done, _ = engine.instance_start(
                    workflow="t_retained_hooks", input={"iban": SECRET_IBAN}
                )
                run_ready(done)
            OutboundEmail.objects.create(
                message_id="<m1@x>",
                kind="k",
                to=["a@x"],
                subject="s",
                body_text="b",
                created_at=start,
                instance_id=done.pk,
            )
        assert WebhookDelivery.objects.filter(instance_id=done.pk).exists()
        with time_machine.travel(start + timedelta(days=3), tick=False):
            assert sweep_retention() == {"erased": 1, "deleted": 1}
        assert not WebhookDelivery.objects.filter(instance_id=done.pk).exists()
        assert not OutboundEmail.objects.filter(instance_id=done.pk).exists()
    finally:
        registry.unregister(wf.name, wf.version)


def test_rotation_reencrypts_pending_signal_payloads(card_flow, keys) -> None:
    from orchestration.models import Signal
    from orchestration.retention import rotate_keys
    from orchestration.waits import signal_send

    settings, first, second = keys
    instance = _start_card()
    signal_send(instance_id=instance.pk, name="callback", payload={"code": CODE})
    settings.SIGNOFF_ENCRYPTION_KEYS = f"{second},{first}"
    sealing._keys_from.cache_clear()
    assert rotate_keys() >= 2
    settings.SIGNOFF_ENCRYPTION_KEYS = second
    sealing._keys_from.cache_clear()
    assert sealing.open_value(Signal.objects.get(instance=instance).payload)["code"] == CODE


def test_the_scrubber_finds_escaped_and_quoted_copies() -> None:
    scrubber = sealing.Scrubber(["O'Brien & <Co>", "Zoë"])
    for text in (
        "name O'Brien & <Co>",  # as typed
        "name O&#x27;Brien &amp; &lt;Co&gt;",  # HTML-escaped (a mail body)
        "name O'Brien &amp; &lt;Co&gt;",  # HTML-escaped without quotes
        'name "Zo\\u00eb"',  # JSON-escaped
        "name 'Zo\\xeb'".replace("\\xeb", "ë"),  # repr
    ):
        cleaned, n = scrubber.text(text)
        assert n == 1 and "Brien" not in cleaned and "Zo" not in cleaned, text
    assert scrubber.json({"k": ["Zoë", 1]}) == ({"k": [sealing.MASK, 1]}, 1)
    assert not sealing.Scrubber(["ab", "  "])  # too short to say anything about anyone


def test_the_masked_keys_setting_is_read_again_when_it_changes(settings) -> None:
    assert sealing.masked({"nick": "x", "api_key": "y"}) == {"nick": "x", "api_key": sealing.MASK}
    settings.SIGNOFF_MASKED_KEYS = r"^nick$"
    assert sealing.masked({"nick": "x", "api_key": "y"}) == {"nick": sealing.MASK, "api_key": "y"}


def test_a_workflow_output_derived_from_a_sealed_field_is_sealed(keys, staff) -> None:
    """``output=`` computes the instance's result from sealed fields: each top-level value
    holding a copy is sealed when written (the API shows it masked, view_sensitive opens it),
    the others stay as they are."""
    wf = Workflow(
        "t_sealed_output",
        sensitive=["input.iban"],
        output=lambda ctx: {"summary": f"paid to {ctx.input['iban']}", "n": 1},
    )
    wf.task(_use, name="use")
    registry.register(wf)
    try:
        instance, _ = engine.instance_start(workflow=wf.name, input={"iban": SECRET_IBAN})
        run_ready(instance)
        instance = refresh(instance)
        assert instance.state == "succeeded"
        assert sealing.is_sealed(instance.output["summary"]) and instance.output["n"] == 1
        assert SECRET_IBAN not in raw(
            "SELECT output::text FROM orchestration_workflowinstance WHERE id = %s", instance.pk
        )
        assert sealing.open_value(instance.output["summary"]) == f"paid to {SECRET_IBAN}"
        client = APIClient()
        client.force_authenticate(staff)
        body = client.get(f"/api/v1/instances/{instance.pk}/").content.decode()
        assert SECRET_IBAN not in body and "••••••" in body
    finally:
        registry.unregister(wf.name, wf.version)
