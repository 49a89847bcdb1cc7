"""README's "Try it" runs as written: every curl in it is parsed out of README.md and sent
through the test client (``$API`` and the token as the README's own commands make them,
``<id>`` the instance the block started last), and each must succeed."""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from orchestration.models import WorkflowInstance

pytestmark = pytest.mark.django_db

README = Path(__file__).resolve().parent.parent / "README.md"


def try_it_block() -> str:
    text = README.read_text()
    section = text[text.index("### Try it") :]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def commands(block: str) -> list[tuple[str, list[str]]]:
    """Shell commands, each as its line and split as the shell would (continuation lines
    joined, a quoted argument may span lines, comments dropped)."""
    found, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the argument goes on on the next line
            continue
        pending_line, pending = pending, ""
        if words:
            found.append((pending_line, words))
    assert not pending, f"unclosed quote in: {pending}"
    return found


def curl(words: list[str]) -> dict[str, Any]:
    """The method, URL, headers and body of a curl command line."""
    call: dict[str, Any] = {"method": "GET", "url": None, "headers": {}, "body": None}
    args = iter(words[1:])
    for word in args:
        if word == "-X":
            call["method"] = next(args)
        elif word == "-H":
            name, _, value = next(args).partition(": ")
            call["headers"][name] = value
        elif word == "-d":
            call["body"] = next(args)
            call["method"] = "POST" if call["method"] == "GET" else call["method"]
        elif word == "-s":
            continue
        else:
            assert call["url"] is None, f"two URLs in {words}"
            call["url"] = word
    return call


def test_try_it_examples_run_as_written(django_user_model: Any) -> None:
    django_user_model.objects.create_user("alice")
    shell: dict[str, str] = {}
    statuses = []
    started: WorkflowInstance | None = None
    for line, words in commands(try_it_block()):
        if words[0] != "curl":
            name, _, value = line.partition("=")
            if value.startswith("$(") and "drf_create_token alice" in value:
                out = io.StringIO()
                call_command("drf_create_token", "alice", stdout=out)
                field = int(re.search(r"\$(\d+)", value).group(1))  # awk '{print $3}'
                value = out.getvalue().split()[field - 1]
            shell[name] = value
            continue
        call = curl(words)
        url = call["url"].replace("$API", shell["API"].removeprefix("http://127.0.0.1:8000"))
        if "<id>" in url:
            assert started is not None, f"{url} names an instance before one was started"
            url = url.replace("<id>", str(started.pk))
        headers = {
            f"HTTP_{name.upper().replace('-', '_')}": value.replace("$TOKEN", shell["TOKEN"])
            for name, value in call["headers"].items()
            if name != "Content-Type"
        }
        if call["body"] is not None:
            json.loads(call["body"])  # valid JSON as written
            response = Client().generic(
                call["method"], url, call["body"], "application/json", **headers
            )
        else:
            response = Client().generic(call["method"], url, **headers)
        statuses.append((call["method"], url.split("/")[-2] or url, response.status_code))
        assert response.status_code < 300, (url, call["body"], response.content)
        if call["method"] == "POST" and url.endswith("/instances/"):
            started = WorkflowInstance.objects.get(pk=response.json()["id"])
            assert started.workflow == json.loads(call["body"])["workflow"]
    started_workflows = {
        w for w in WorkflowInstance.objects.values_list("workflow", flat=True).distinct()
    }
    assert started_workflows == {"customer_onboarding", "trip_booking"}, statuses
    assert [s for _, _, s in statuses].count(201) == 2
    assert any(status == 202 for _, _, status in statuses)  # the signal was taken


def test_demo_workflow_inputs_in_the_list_start_as_written(django_user_model: Any) -> None:
    """The input the README's list of demo workflows shows for ``trip_booking`` starts one."""
    text = README.read_text()
    item = re.search(r"^- `trip_booking`.*?(?=^\S|^- )", text, re.S | re.M).group(0)
    shown = re.search(r"`(\{.*?\})`", item, re.S).group(1)
    client = Client()
    client.force_login(django_user_model.objects.create_user("alice"))
    response = client.post(
        "/api/v1/instances/",
        {"workflow": "trip_booking", "input": json.loads(shown)},
        content_type="application/json",
    )
    assert response.status_code == 201, (shown, response.content)


# -- "Testing your workflows": the example workflow module and its tests, run as written ------
#
# The first block (the user's workflow module) is registered for these tests only; the second
# (the user's test module) is executed here, so pytest collects its fixtures and tests as if
# they were this file's, each marked to run with the workflow registered.


def readme_testing_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Testing your workflows") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def readme_workflow() -> Any:
    from orchestration.definitions import registry

    names = {(wf.name, wf.version) for wf in registry.all()}
    exec(compile(readme_testing_blocks()[0], "README.md (myapp/workflows.py)", "exec"), {})
    added = [wf for wf in registry.all() if (wf.name, wf.version) not in names]
    assert [wf.name for wf in added] == ["contract_signing"]
    yield added[0]
    for wf in added:
        registry.unregister(wf.name, wf.version)


def is_fixture(value: Any) -> bool:
    return type(value).__name__ == "FixtureFunctionDefinition" or hasattr(
        value, "_pytestfixturefunction"
    )


def _collect_readme_tests() -> None:
    example: dict[str, Any] = {}
    code = compile(readme_testing_blocks()[1], "README.md (tests/test_contract_signing.py)", "exec")
    exec(code, example)
    tests = [name for name in example if name.startswith("test_")]
    assert len(tests) == 4, tests
    for name, value in list(example.items()):
        if name.startswith("test_"):
            globals()[f"test_readme_example_{name.removeprefix('test_')}"] = (
                pytest.mark.usefixtures("readme_workflow")(value)
            )
        elif is_fixture(value):
            globals()[name] = value


_collect_readme_tests()
