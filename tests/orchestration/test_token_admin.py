"""API tokens in the admin: no page (list, search, view, history, delete, messages, recent
actions) shows a whole key, to view-only staff or to a superuser; popups, ``_to_field`` and
lookups on the key (an oracle for it) are refused; revoking stays. Tokens come from the stock
``manage.py drf_create_token <user>``, which keeps working."""

from __future__ import annotations

import importlib
import io
from typing import Any

import pytest
from django.apps import apps
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token, TokenProxy

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    viewer = django_user_model.objects.create_user("vera", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(content_type__app_label="authtoken", codename="view_tokenproxy")
    )
    return {
        "alice": django_user_model.objects.create_user("alice"),
        "root": django_user_model.objects.create_superuser("root", "root@example.com", "pw"),
        "viewer": viewer,
    }


@pytest.fixture
def keys(people: dict[str, Any]) -> dict[str, str]:
    """Tokens made the documented way, for alice, the superuser and the viewer."""
    for name in ("alice", "root", "vera"):
        out = io.StringIO()
        call_command("drf_create_token", name, stdout=out)
        assert Token.objects.get(user__username=name).key in out.getvalue()  # the contract
    return {t.user.username: t.key for t in Token.objects.select_related("user")}


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:authtoken_tokenproxy_{name}", args=args)


def assert_no_whole_key(response: Any, keys: dict[str, str]) -> None:
    shown = response.content.decode() + response.get("Location", "")
    for name, key in keys.items():
        assert key not in shown, f"{name}'s key on {response.request['PATH_INFO']}"


def assert_no_whole_key_but(content: str, keys: dict[str, str], typed: str) -> None:
    assert f'value="{typed}"' in content  # the search box (and its links) echo it
    for key in keys.values():
        if key != typed:
            assert key not in content


def pages(client: Client, people: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    alice = people["alice"].pk
    return {
        "index": client.get(reverse("admin:index")),
        "list": client.get(url("changelist")),
        "search by user": client.get(url("changelist"), {"q": "alice"}),
        "search by key": client.get(url("changelist"), {"q": keys["alice"]}),
        "date filter": client.get(url("changelist"), {"created__gte": "2000-01-01 00:00+00:00"}),
        "view": client.get(url("change", alice)),
        "history": client.get(url("history", alice)),
        "delete": client.get(url("delete", alice)),
        "add": client.get(url("add")),
    }


def test_the_superuser_sees_prefixes_only_and_revokes_a_token(
    people: dict[str, Any], keys: dict[str, str]
) -> None:
    client = Client()
    client.force_login(people["root"])
    seen = pages(client, people, keys)
    assert {name: r.status_code for name, r in seen.items()} == {
        "index": 200,
        "list": 200,
        "search by user": 200,
        "search by key": 200,
        "date filter": 200,
        "view": 200,
        "history": 200,
        "delete": 200,
        "add": 403,  # tokens are made with manage.py drf_create_token
    }
    # the search box echoes what was typed: the one key on that page is the caller's own
    searched = seen.pop("search by key").content.decode()
    assert "0 results" in searched  # no search on the key
    assert_no_whole_key_but(searched, keys, keys["alice"])
    for response in seen.values():
        assert_no_whole_key(response, keys)
    listing = seen["list"].content.decode()
    assert all(f"{key[:6]}…" in listing for key in keys.values())
    assert f"{keys['alice'][:6]}…" in seen["view"].content.decode()

    # revoking: confirm page, POST, the message and the log entry, all without the key
    response = client.post(url("delete", people["alice"].pk), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert f"{keys['alice'][:6]}…" in response.content.decode()
    assert_no_whole_key(response, keys)
    for hop, _ in response.redirect_chain:
        assert keys["alice"] not in hop
    assert not Token.objects.filter(user=people["alice"]).exists()
    entry = LogEntry.objects.get(
        content_type=ContentType.objects.get_for_model(TokenProxy, for_concrete_model=False)
    )
    assert entry.object_repr == f"{keys['alice'][:6]}…"
    assert keys["alice"] not in entry.object_id
    assert_no_whole_key(client.get(reverse("admin:index")), keys)  # recent actions
    api = Client(HTTP_AUTHORIZATION=f"Token {keys['alice']}")
    assert api.get("/api/v1/workflows/").status_code == 401  # revoked


def test_view_only_staff_see_prefixes_only_and_cannot_revoke(
    people: dict[str, Any], keys: dict[str, str]
) -> None:
    client = Client()
    client.force_login(people["viewer"])
    seen = pages(client, people, keys)
    assert seen["list"].status_code == seen["view"].status_code == 200
    assert seen["history"].status_code == 200
    assert seen["delete"].status_code == seen["add"].status_code == 403
    assert_no_whole_key_but(seen.pop("search by key").content.decode(), keys, keys["alice"])
    for response in seen.values():
        assert_no_whole_key(response, keys)
    assert client.post(url("delete", people["alice"].pk), {"post": "yes"}).status_code == 403
    assert (
        client.post(url("change", people["alice"].pk), {"user": people["alice"].pk}).status_code
        == 403
    )
    assert Token.objects.count() == 3
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize(
    "query",
    [
        {"key__startswith": "PREFIX"},
        {"pk__startswith": "PREFIX"},
        {"key": "WHOLE"},
        {"user__auth_token__key__startswith": "PREFIX"},
    ],
)
def test_no_lookup_on_the_key_can_read_it_through_the_result_count(
    people: dict[str, Any], keys: dict[str, str], query: dict[str, str]
) -> None:
    client = Client()
    client.force_login(people["root"])
    key = keys["alice"]
    params = {k: key[:10] if v == "PREFIX" else key for k, v in query.items()}
    response = client.get(url("changelist"), params)
    assert response.status_code in (302, 400)  # refused, never filtered
    assert_no_whole_key(response, keys)
    if response.status_code == 302:
        assert "e=1" in response["Location"]  # the admin's "invalid lookup" redirect


@pytest.mark.parametrize("param", ["_popup", "_to_field"])
def test_popups_which_answer_with_the_key_are_refused(
    people: dict[str, Any], keys: dict[str, str], param: str
) -> None:
    client = Client()
    client.force_login(people["root"])
    value = {"_popup": "1", "_to_field": "key"}[param]
    alice = people["alice"].pk
    for target in (url("changelist"), url("change", alice), url("history", alice)):
        response = client.get(target, {param: value})
        assert response.status_code == 403
        assert_no_whole_key(response, keys)
    response = client.post(url("delete", alice), {"post": "yes", param: value})
    assert response.status_code == 403
    assert_no_whole_key(response, keys)
    assert Token.objects.filter(user=people["alice"]).exists()


def test_drf_create_token_still_makes_working_tokens(
    people: dict[str, Any], keys: dict[str, str]
) -> None:
    api = Client(HTTP_AUTHORIZATION=f"Token {keys['alice']}")
    assert api.get("/api/v1/workflows/").status_code == 200


def test_the_migration_masks_keys_the_stock_admin_logged(
    people: dict[str, Any], keys: dict[str, str]
) -> None:
    proxy = ContentType.objects.get_for_model(TokenProxy, for_concrete_model=False)
    concrete = ContentType.objects.get_for_model(Token)
    LogEntry.objects.create(  # as DRF's TokenAdmin logged an addition
        user=people["root"],
        content_type=proxy,
        object_id=str(people["alice"].pk),
        object_repr=keys["alice"],
        action_flag=ADDITION,
    )
    LogEntry.objects.create(  # as older DRF versions (the key was the admin's id)
        user=people["root"],
        content_type=concrete,
        object_id=keys["root"],
        object_repr=keys["root"],
        action_flag=ADDITION,
    )
    client = Client()
    client.force_login(people["root"])
    assert keys["alice"] in client.get(reverse("admin:index")).content.decode()  # before

    migration = importlib.import_module(
        "integrations.migrations.0005_mask_api_token_keys_in_admin_log"
    )
    migration.mask_token_keys(apps, None)
    reprs = sorted(LogEntry.objects.values_list("object_id", "object_repr"))
    assert reprs == sorted(
        [
            (str(people["alice"].pk), f"{keys['alice'][:6]}…"),
            (f"{keys['root'][:6]}…", f"{keys['root'][:6]}…"),
        ]
    )
    assert_no_whole_key(client.get(reverse("admin:index")), keys)
    migration.mask_token_keys(apps, None)  # idempotent
    assert sorted(LogEntry.objects.values_list("object_id", "object_repr")) == reprs
