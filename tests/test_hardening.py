"""Hardening (issue 11, items 11 and 12): JSON depth limits on every JSON input, login and
token throttling, refusal to start without real secrets outside the embedded default, and the
docker-compose file's safe defaults.

Every refusal also asserts that nothing changed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest, Decision
from integrations.models import WebhookSubscription
from orchestration import engine, jsonsafe
from orchestration.models import Event, Signal, StepRun, WorkflowInstance
from orchestration.waits import sign

DEEP = 2_000  # the attack run's figure: Python's decoder gives up near 1,000


def deep_value(depth: int) -> Any:
    value: Any = 1
    for n in range(depth):
        value = [value] if n % 2 else {"a": value}
    return value


def deep_text(depth: int) -> str:
    """JSON text nested ``depth`` levels; built as text (json.dumps would recurse too)."""
    return "[" * depth + "1" + "]" * depth


def snapshot() -> dict[str, Any]:
    """The rows any of the refused requests below could have changed."""
    return {
        "instances": sorted(
            WorkflowInstance.objects.values_list("id", "state", "updated_at", "last_seq")
        ),
        "steps": sorted(StepRun.objects.values_list("id", "state", "attempt", "output")),
        "events": Event.objects.count(),
        "signals": Signal.objects.count(),
        "requests": sorted(ApprovalRequest.objects.values_list("id", "state")),
        "decisions": Decision.objects.count(),
        "periodic": sorted(PeriodicTask.objects.values_list("id", "args", "kwargs", "headers")),
        "hooks": sorted(WebhookSubscription.objects.values_list("id", "event_types", "workflows")),
    }


def grant(user: Any, *names: str) -> Any:
    for name in names:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return type(user).objects.get(pk=user.pk)


def token_client(user: Any) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def run_scheduled(instance: WorkflowInstance) -> None:
    while due := list(StepRun.objects.filter(instance=instance, state="scheduled")):
        for step in due:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


# -- JSON depth: the pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        ('{"a": [1, {"b": [2, 3]}]}', False),
        (deep_text(100), False),
        (deep_text(101), True),
        (deep_text(DEEP), True),
        ("[" * 100_000, True),  # unclosed: the decoder would still descend
        (json.dumps({"s": "[" * 5_000}), False),  # brackets inside a string do not count
        (json.dumps({"s": '\\"[[[' * 2_000}), False),  # nor escaped quotes with brackets
        (json.dumps([[]] * 5_000), False),  # many brackets, shallow
        ("]" * 5_000 + deep_text(50), False),  # stray closers do not hide or fake depth
    ],
)
def test_too_deep_counts_nesting_without_decoding(text: str, deeper: bool) -> None:
    assert jsonsafe.too_deep(text) is deeper
    assert jsonsafe.too_deep(text.encode()) is deeper


def test_too_deep_is_linear_on_hostile_text() -> None:
    # Quotes and backslashes that a backtracking string pattern would take quadratic time on.
    hostile = '"\\' * 120_000 + deep_text(101)
    started = time.perf_counter()
    jsonsafe.too_deep(hostile)
    jsonsafe.too_deep('["' + '\\"' * 120_000 + "[" * 200)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (deep_text(DEEP), "nested deeper than 100 levels"),
        ("[" * 100_000, "nested deeper than 100 levels"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": ', "not valid JSON: Expecting value (line 1)"),
    ],
)
def test_loads_refuses_with_a_message_never_a_stack_error(text: str, message: str) -> None:
    with pytest.raises(jsonsafe.JSONInputError, match=re.escape(message)):
        jsonsafe.loads(text)
    assert jsonsafe.loads(deep_text(100)) is not None


# -- JSON depth: every input -------------------------------------------------------------------


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    managers, _ = Group.objects.get_or_create(name="managers")
    users = {
        name: django_user_model.objects.create_user(
            name, email=f"{name}@example.com", password=f"pw-{name}-123"
        )
        for name in ("alice", "bob")
    }
    managers.user_set.add(users["bob"])
    users["oper"] = grant(
        django_user_model.objects.create_user("oper", password="pw-oper-123", is_staff=True),
        "orchestration.view_workflowinstance",
        "orchestration.operate_instance",
    )
    users["root"] = django_user_model.objects.create_superuser("root", "r@example.com", "pw-r-1")
    return users


@pytest.fixture
def failed(people: dict[str, Any]) -> tuple[WorkflowInstance, StepRun]:
    """A t_fixable instance whose step ``fragile`` failed: "complete by hand" is offered."""
    instance, _ = engine.instance_start(workflow="t_fixable", started_by=people["alice"])
    run_scheduled(instance)
    fragile = StepRun.objects.get(instance=instance, name="fragile")
    assert fragile.state == "failed"
    return instance, fragile


@pytest.mark.django_db
@pytest.mark.parametrize("where", ["status page", "admin"])
@pytest.mark.parametrize("depth", [DEEP, 150, 40])
def test_complete_by_hand_with_deep_json_is_a_form_error(where, depth, people, failed) -> None:
    instance, fragile = failed
    client = Client()
    client.force_login(people["oper"])
    if where == "admin":
        url = reverse(
            "admin:orchestration_workflowinstance_step_operate",
            args=[instance.pk, fragile.pk, "complete"],
        )
    else:
        url = reverse("instances:step-action", args=[instance.pk, fragile.pk, "complete"])
    before = snapshot()
    response = client.post(
        url, {"confirm": "1", "output": deep_text(depth), "reason": "fixed it by hand"}
    )
    assert response.status_code in (200, 400), response.status_code
    assert b"nested deeper than" in response.content
    assert snapshot() == before
    ok = client.post(url, {"confirm": "1", "output": '{"fixed": 1}', "reason": "fixed it by hand"})
    assert ok.status_code == 302
    assert StepRun.objects.get(pk=fragile.pk).state == "succeeded"


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [DEEP, 150])
def test_every_api_write_refuses_deep_json_with_400(depth, people, settings) -> None:
    settings.SIGNOFF_SIGNAL_SECRETS = {"t_signal": "s3cret"}
    alice, bob = people["alice"], people["bob"]
    waiting, _ = engine.instance_start(workflow="t_signal", started_by=alice)
    run_scheduled(waiting)
    expense, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 80, "currency": "EUR", "description": "Taxi", "requester": "alice"},
        started_by=alice,
    )
    run_scheduled(expense)
    request = ApprovalRequest.objects.get(instance=expense)
    body = deep_text(depth)
    signal_path = f"/api/v1/instances/{waiting.pk}/signals/go/"
    calls = [
        (alice, "/api/v1/instances/", '{"workflow": "t_sequence", "input": ' + body + "}", {}),
        (alice, f"/api/v1/instances/{waiting.pk}/cancel/", '{"reason": ' + body + "}", {}),
        (alice, signal_path, body, {}),
        (bob, f"/api/v1/approvals/{request.pk}/approve/", '{"comment": ' + body + "}", {}),
        (bob, f"/api/v1/approvals/{request.pk}/reject/", body, {}),
        # Signed: the signature is good, the body is still refused.
        (
            None,
            signal_path,
            body,
            {"HTTP_X_SIGNOFF_SIGNATURE": sign("s3cret", body.encode(), path=signal_path)},
        ),
    ]
    before = snapshot()
    for user, url, data, headers in calls:
        client = token_client(user) if user else APIClient()
        response = client.post(url, data=data, content_type="application/json", **headers)
        assert response.status_code == 400, (url, response.content[:200])
        assert response.json()["code"] == "parse_error", response.json()
        assert "nested deeper than 100 levels" in response.json()["detail"]
    assert snapshot() == before


@pytest.mark.django_db
def test_periodic_task_admin_refuses_deep_json_in_args_kwargs_and_headers(people) -> None:
    client = Client()
    client.force_login(people["root"])
    task = PeriodicTask.objects.order_by("pk").first()
    assert task is not None  # the sweepers' schedule, installed by migrate
    url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not hasattr(v, "pk")}
    data.update(
        {
            "name": task.name,
            "task": task.task,
            "regtask": task.task,
            "interval": task.interval_id or "",
            "enabled": "on",
            "args": "[]",
            "kwargs": "{}",
            "headers": "{}",
            "priority": "",
            "expire_seconds": "",
            "start_time_0": "",
            "start_time_1": "",
            "expires_0": "",
            "expires_1": "",
        }
    )
    for key in ("crontab", "solar", "clocked", "last_run_at", "total_run_count", "date_changed"):
        data.pop(key, None)
    before = snapshot()
    for field in ("args", "kwargs", "headers"):
        response = client.post(url, {**data, field: deep_text(DEEP)})
        assert response.status_code == 200, (field, response.status_code)
        errors = response.context["adminform"].form.errors
        assert "nested deeper than 100 levels" in str(errors.get(field)), (field, errors)
    assert snapshot() == before
    ok = client.post(url, data)
    assert ok.status_code == 302, ok.context and ok.context["adminform"].form.errors


@pytest.mark.django_db
def test_webhook_admin_takes_no_json_text(people) -> None:
    """Its event types and workflows are checkboxes: JSON text is not parsed, only refused."""
    client = Client()
    client.force_login(people["root"])
    before = snapshot()
    response = client.post(
        reverse("admin:integrations_webhooksubscription_add"),
        {
            "name": "deep",
            "url": "https://hooks.example/x",
            "event_types": deep_text(DEEP),
            "workflows": deep_text(DEEP),
            "active": "on",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors.keys() >= {"event_types", "workflows"}
    assert snapshot() == before


# -- login throttling ---------------------------------------------------------------------------


def logged_in_as(client: Client) -> str | None:
    from django.contrib.auth import get_user_model

    pk = client.session.get("_auth_user_id")
    return get_user_model().objects.get(pk=pk).get_username() if pk else None


@pytest.mark.django_db
@pytest.mark.parametrize("login_url", ["/accounts/login/", "/admin/login/"])
def test_forty_wrong_passwords_then_the_right_one_is_refused(login_url, people) -> None:
    import time_machine
    from django.utils import timezone

    name, password = ("root", "pw-r-1") if "admin" in login_url else ("bob", "pw-bob-123")
    started = timezone.now()
    with time_machine.travel(started, tick=False):
        attacker = Client(REMOTE_ADDR="203.0.113.7")
        for n in range(40):
            response = attacker.post(login_url, {"username": name, "password": f"guess-{n}"})
            assert response.status_code in (200, 429), response.status_code
            assert logged_in_as(attacker) is None
        assert response.status_code == 429
        assert b"Too many failed logins" in response.content
        right = attacker.post(login_url, {"username": name, "password": password})
        assert right.status_code == 429
        assert logged_in_as(attacker) is None
        # The lock is for this user from this address: others log in as usual.
        other = Client(REMOTE_ADDR="203.0.113.7")
        other.post(login_url, {"username": "oper", "password": "pw-oper-123"})
        assert logged_in_as(other) == "oper"
        elsewhere = Client(REMOTE_ADDR="198.51.100.20")
        elsewhere.post(login_url, {"username": name, "password": password})
        assert logged_in_as(elsewhere) == name
    # After the cool-off (15 minutes after the last failure) the right password works again.
    with time_machine.travel(started + timezone.timedelta(minutes=16), tick=False):
        attacker.post(login_url, {"username": name, "password": password})
        assert logged_in_as(attacker) == name


@pytest.mark.django_db
def test_a_few_typos_do_not_lock_and_a_success_clears_them(people) -> None:
    client = Client(REMOTE_ADDR="192.0.2.1")
    for _ in range(4):
        client.post("/accounts/login/", {"username": "bob", "password": "typo"})
    client.post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"})
    assert logged_in_as(client) == "bob"
    client.logout()
    for _ in range(4):  # counted from zero again
        assert (
            client.post("/accounts/login/", {"username": "bob", "password": "typo"}).status_code
            == 200
        )
    client.post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"})
    assert logged_in_as(client) == "bob"


@pytest.mark.django_db
def test_test_client_logins_still_work(people) -> None:
    """client.login() calls authenticate() without a request: the lockout backend lets it pass
    to the password check instead of raising (the suite logs in this way)."""
    client = Client()
    assert client.login(username="bob", password="pw-bob-123")
    assert not client.login(username="bob", password="wrong")
    client.force_login(people["alice"])
    assert client.get("/inbox/").status_code == 200


# -- API token throttling -----------------------------------------------------------------------


@pytest.fixture
def token_limit(settings) -> int:
    from django.core.cache import cache

    settings.SIGNOFF_TOKEN_FAILURES_PER_IP = 20
    settings.SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS = 600
    cache.clear()
    yield 20
    cache.clear()


@pytest.mark.django_db
def test_a_burst_of_bad_tokens_gets_429_and_a_normal_user_is_unaffected(
    token_limit, people
) -> None:
    import time_machine
    from django.utils import timezone

    good = Token.objects.create(user=people["alice"]).key
    url = "/api/v1/instances/"
    started = timezone.now()
    with time_machine.travel(started, tick=False):
        attacker = APIClient(REMOTE_ADDR="203.0.113.9")
        statuses = []
        for n in range(30):
            attacker.credentials(HTTP_AUTHORIZATION=f"Token {n:040x}")
            statuses.append(attacker.get(url).status_code)
        assert statuses == [401] * token_limit + [429] * (30 - token_limit)
        refused = attacker.get(url)
        assert refused.json()["code"] == "throttled"
        assert int(refused["Retry-After"]) > 0
        # A valid token from that address is refused too (else the 429 would tell right from
        # wrong guesses); nothing is written either way.
        attacker.credentials(HTTP_AUTHORIZATION=f"Token {good}")
        before = snapshot()
        started_body = {"workflow": "t_sequence"}
        assert attacker.post(url, started_body, format="json").status_code == 429
        assert snapshot() == before
        # Another address with the same valid token, and a session from the attacker's
        # address, are not affected.
        user = APIClient(REMOTE_ADDR="198.51.100.30")
        user.credentials(HTTP_AUTHORIZATION=f"Token {good}")
        assert user.get(url).status_code == 200
        session = APIClient(REMOTE_ADDR="203.0.113.9")
        session.force_login(people["alice"])
        assert session.get(url).status_code == 200
    with time_machine.travel(started + timezone.timedelta(seconds=601), tick=False):
        assert attacker.get(url).status_code == 200  # the window is over


# -- no start without real secrets outside the embedded default ---------------------------------

ROOT = Path(__file__).resolve().parent.parent
REAL_SECRET_KEY = "x9" * 20 + "-a-real-looking-secret-key-QZ"
REAL_FERNET_KEY = "ZmRbNGX0o2tq7w3l4Jb0o6Ck2sXo2s9gD0xT6yq0i7s="


def run(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A process environment with nothing from this test run (no tests.settings secrets)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SIGNOFF_DATA_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
        **extra,
    }


PG = {"DATABASE_URL": "postgres://signoff@db.invalid:5432/signoff"}
REDIS = {"CELERY_BROKER_URL": "redis://redis.invalid:6379/0"}
KEYS = {"SIGNOFF_ENCRYPTION_KEYS": REAL_FERNET_KEY}


def test_the_fernet_key_used_here_is_valid() -> None:
    from cryptography.fernet import Fernet

    Fernet(REAL_FERNET_KEY)


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        pytest.param({**PG, **KEYS}, "SECRET_KEY is not set", id="database_without_secret_key"),
        pytest.param({**REDIS, **KEYS}, "SECRET_KEY is not set", id="broker_without_secret_key"),
        pytest.param(
            {**PG, **KEYS, "SECRET_KEY": "change-me-to-a-long-random-string"},
            "SECRET_KEY is a placeholder",
            id="the_old_env_example_placeholder",
        ),
        pytest.param(
            {**PG, **KEYS, "SECRET_KEY": "dev-only-insecure-secret-key-change-me"},
            "SECRET_KEY is a placeholder",
            id="the_embedded_default_key",
        ),
        pytest.param(
            {**PG, **KEYS, "SECRET_KEY": "short-but-set"},
            "SECRET_KEY is too weak",
            id="short_secret_key",
        ),
        pytest.param(
            {**PG, "SECRET_KEY": REAL_SECRET_KEY},
            "SIGNOFF_ENCRYPTION_KEYS is not set",
            id="no_encryption_keys",
        ),
        pytest.param(
            {**PG, "SECRET_KEY": REAL_SECRET_KEY, "SIGNOFF_ENCRYPTION_KEYS": "change-me"},
            "SIGNOFF_ENCRYPTION_KEYS: key 1 is not a Fernet key",
            id="encryption_key_not_fernet",
        ),
        pytest.param({**PG, **REDIS}, "SIGNOFF_ENCRYPTION_KEYS is not set", id="neither"),
    ],
)
def test_manage_py_refuses_to_start_without_real_secrets(tmp_path, environment, named) -> None:
    code, output = run(
        [sys.executable, "manage.py", "check", "--deploy"], clean_env(tmp_path, **environment)
    )
    assert code != 0, output
    assert named in output, output
    assert "Signoff will not start" in output


def test_every_kind_of_process_refuses_without_secrets(tmp_path) -> None:
    """gunicorn and Celery never run system checks: the refusal is at settings import, so the
    web server, the worker, beat and migrate stop too."""
    env = clean_env(tmp_path, **PG, **REDIS)
    bin_dir = Path(sys.executable).parent
    commands = {
        "gunicorn": [str(bin_dir / "gunicorn"), "--check-config", "config.wsgi:application"],
        "worker": [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo"],
        "beat": [sys.executable, "-m", "celery", "-A", "config", "beat"],
        "migrate": [sys.executable, "manage.py", "migrate", "--noinput"],
    }
    for name, command in commands.items():
        code, output = run(command, env)
        assert code != 0, (name, output[-2000:])
        assert "SECRET_KEY is not set" in output, (name, output[-2000:])


def test_with_real_secrets_it_starts(tmp_path) -> None:
    env = clean_env(tmp_path, **PG, **REDIS, **KEYS, SECRET_KEY=REAL_SECRET_KEY)
    code, output = run([sys.executable, "manage.py", "check"], env)
    assert code == 0, output
    code, output = run(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--check-config",
            "config.wsgi:application",
        ],
        env,
    )
    assert code == 0, output


def test_the_embedded_default_needs_no_setup(tmp_path) -> None:
    """No DATABASE_URL and no broker, or the bundled Redis that runall hands its children."""
    from orchestration.embedded import socket_path_for

    plain = clean_env(tmp_path)
    code, output = run([sys.executable, "manage.py", "check"], plain)
    assert code == 0, output
    runall_child = clean_env(
        tmp_path, CELERY_BROKER_URL=f"redis+socket://{socket_path_for(tmp_path / 'var')}"
    )
    code, output = run([sys.executable, "manage.py", "check"], runall_child)
    assert code == 0, output


# -- docker-compose: loopback only, no working placeholder secret, no demo users by default -----

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = ("migrate", "web", "worker", "beat")
REQUIRED = {"SECRET_KEY", "SIGNOFF_ENCRYPTION_KEYS", "POSTGRES_PASSWORD"}


def compose() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(COMPOSE.read_text())  # resolves the x-app merge keys


def env_example() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {name: value for name, value in pairs}


def interpolate(value: str, env: dict[str, str]) -> tuple[str, set[str]]:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} ($$ is a literal $): the value, and
    the variables whose :? refused."""
    refused: set[str] = set()

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            refused.add(name)
            return ""
        return arg if op == ":-" else ""

    pattern = r"\$\$|\$\{(\w+)(?:(:[-?])([^}]*))?\}"
    return re.sub(pattern, one, value), refused


def service_env(service: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    values, refused = {}, set()
    for name, raw in (service.get("environment") or {}).items():
        values[name], missing = interpolate(str(raw), env)
        refused |= missing
    return values, refused


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = {
        name: service.get("ports", [])
        for name, service in compose()["services"].items()
        if service.get("ports")
    }
    assert set(published) == {"web", "mailpit", "pgbouncer", "rabbitmq", "postgres-replica"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_refuses_to_run_without_the_secrets() -> None:
    """`cp .env.example .env` and nothing else: Compose stops on each required variable (they
    have no default), and the shipped example holds no value for them."""
    data, shipped = compose(), env_example()
    for name in REQUIRED:
        assert shipped.get(name, "") == "", name
    assert not [v for v in shipped.values() if "change-me" in v.lower()]
    for name in APP_SERVICES:
        _, refused = service_env(data["services"][name], shipped)
        assert refused == REQUIRED, (name, refused)
    _, refused = service_env(data["services"]["postgres"], shipped)
    assert refused == {"POSTGRES_PASSWORD"}
    # With the three set, every app container gets them and a DATABASE_URL that matches the
    # postgres service.
    chosen = {
        "SECRET_KEY": "s" * 60,
        "SIGNOFF_ENCRYPTION_KEYS": REAL_FERNET_KEY,
        "POSTGRES_PASSWORD": "0a1b2c3d",
    }
    for name in APP_SERVICES:
        values, refused = service_env(data["services"][name], {**shipped, **chosen})
        assert not refused
        assert values["SECRET_KEY"] == chosen["SECRET_KEY"]
        assert values["SIGNOFF_ENCRYPTION_KEYS"] == REAL_FERNET_KEY
        assert values["DATABASE_URL"] == "postgres://signoff:0a1b2c3d@postgres:5432/signoff"


def test_compose_seeds_no_demo_users_unless_asked_with_a_password(tmp_path) -> None:
    """The migrate step's shell command, run with a stand-in `python` that records its calls."""
    assert env_example()["SEED_DEMO"] == "0"
    command = compose()["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-c"]
    script, _ = interpolate(command[2], {})
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n')
    (stub / "python").chmod(0o755)

    def migrate_step(**env: str) -> tuple[int, list[str], str]:
        calls = tmp_path / f"calls-{len(list(tmp_path.iterdir()))}"
        done = subprocess.run(
            ["sh", "-c", script],
            env={"PATH": f"{stub}:/usr/bin:/bin", "CALLS": str(calls), **env},
            capture_output=True,
            text=True,
        )
        made = calls.read_text().splitlines() if calls.exists() else []
        return done.returncode, made, done.stderr

    assert migrate_step() == (0, ["manage.py migrate --noinput"], "")
    assert migrate_step(SEED_DEMO="0")[1] == ["manage.py migrate --noinput"]
    code, calls, error = migrate_step(SEED_DEMO="1")
    assert code != 0 and "DEMO_PASSWORD" in error
    assert "manage.py seed_demo" not in calls
    code, calls, _ = migrate_step(SEED_DEMO="1", DEMO_PASSWORD="my-own-demo-password")
    assert (code, calls) == (0, ["manage.py migrate --noinput", "manage.py seed_demo"])


def test_the_openapi_schema_declares_the_token_limit_on_every_token_operation() -> None:
    """The 429 above comes from authentication, before any view: the schema says so for each
    operation that takes a token, with its body and its Retry-After header."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if method in ("get", "put", "patch", "post", "delete")
    ]
    with_tokens = [op for op in operations if {"tokenAuth": []} in op[2].get("security", [])]
    assert len(with_tokens) > 30
    for path, method, operation in with_tokens:
        throttled = operation["responses"].get("429")
        assert throttled is not None, (method, path)
        assert "Retry-After" in throttled["headers"]
        body = throttled["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/Error"}
