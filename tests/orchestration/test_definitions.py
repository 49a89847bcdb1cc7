"""The workflow DSL: validation at registration, backoff, retryability."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from orchestration.definitions import (
    DefinitionError,
    NonRetryableError,
    Registry,
    RetryPolicy,
    Workflow,
)


def noop(ctx):  # noqa: ANN001, ANN201
    return None


def make(name: str = "wf", **kwargs) -> Workflow:  # noqa: ANN003
    return Workflow(name, **kwargs)


def test_valid_definition_orders_steps_topologically() -> None:
    wf = make()
    wf.task(noop, name="join", after=["left", "right"])
    wf.task(noop, name="left", after=["start"])
    wf.task(noop, name="right", after=["start"])
    wf.task(noop, name="start")
    Registry().register(wf)
    order = wf.order()
    assert order.index("start") < order.index("left") < order.index("join")
    assert order.index("right") < order.index("join")
    assert wf.leaves() == ["join"]


def test_duplicate_step_name_is_refused_naming_the_step() -> None:
    wf = make()
    wf.task(noop, name="a")
    with pytest.raises(DefinitionError, match="duplicate step name 'a'"):
        wf.task(noop, name="a")


def test_unknown_dependency_is_refused_naming_both_steps() -> None:
    wf = make()
    wf.task(noop, name="a", after=["ghost"])
    with pytest.raises(DefinitionError, match="step 'a' depends on unknown step 'ghost'"):
        Registry().register(wf)


def test_cycle_is_refused_naming_a_step_in_it() -> None:
    wf = make()
    wf.task(noop, name="a", after=["c"])
    wf.task(noop, name="b", after=["a"])
    wf.task(noop, name="c", after=["b"])
    wf.task(noop, name="free")
    with pytest.raises(DefinitionError, match="dependency cycle through step 'a'"):
        Registry().register(wf)


def test_self_dependency_is_refused() -> None:
    wf = make()
    wf.task(noop, name="a", after=["a"])
    with pytest.raises(DefinitionError, match="step 'a' depends on itself"):
        Registry().register(wf)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (RetryPolicy(max_attempts=0), "max_attempts must be an integer >= 1"),
        (RetryPolicy(backoff_coefficient=0.5), "backoff_coefficient must be >= 1"),
        (RetryPolicy(initial_interval=timedelta(seconds=-1)), "initial_interval"),
        (
            RetryPolicy(initial_interval=timedelta(seconds=10), max_interval=timedelta(seconds=1)),
            "max_interval must not be shorter",
        ),
        (RetryPolicy(jitter=1.5), "jitter must be in"),
        (RetryPolicy(non_retryable=(42,)), "non_retryable entries"),
    ],
)
def test_bad_retry_policy_is_refused_naming_the_step(policy: RetryPolicy, message: str) -> None:
    wf = make()
    wf.task(noop, name="charge", retry=policy)
    with pytest.raises(DefinitionError, match=f"step 'charge': {message}"):
        Registry().register(wf)


def test_bad_timeouts_and_deadline_are_refused() -> None:
    wf = make()
    wf.task(noop, name="a", start_to_close=timedelta(0))
    with pytest.raises(DefinitionError, match="step 'a': start_to_close must be a positive"):
        Registry().register(wf)
    wf2 = make(deadline=timedelta(seconds=-5))
    wf2.task(noop, name="a")
    with pytest.raises(DefinitionError, match="deadline must be a positive timedelta"):
        Registry().register(wf2)


def test_bad_names_empty_workflow_and_bad_schema_are_refused() -> None:
    with pytest.raises(DefinitionError, match="workflow name"):
        Registry().register(make("Bad Name"))
    with pytest.raises(DefinitionError, match="at least one step"):
        Registry().register(make())
    wf = make()
    wf.task(noop, name="Not-OK")
    with pytest.raises(DefinitionError, match="step 'Not-OK': name must be"):
        Registry().register(wf)
    wf = make(input_schema={"type": "no-such-type"})
    wf.task(noop, name="a")
    with pytest.raises(DefinitionError, match="invalid input_schema"):
        Registry().register(wf)


def test_registry_keeps_versions_and_serves_the_newest_by_default() -> None:
    reg = Registry()
    v1, v2 = make(version=1), make(version=2)
    v1.task(noop, name="a")
    v2.task(noop, name="a")
    reg.register(v2)
    reg.register(v1)
    assert reg.get("wf") is v2
    assert reg.get("wf", 1) is v1
    assert reg.get("wf", 3) is None
    other = make(version=1)
    other.task(noop, name="a")
    with pytest.raises(DefinitionError, match="already registered"):
        reg.register(other)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2,
        max_interval=timedelta(seconds=10),
        jitter=0,
    )
    delays = [policy.delay(n).total_seconds() for n in range(1, 7)]
    assert delays == [1, 2, 4, 8, 10, 10]


def test_backoff_jitter_stays_within_its_band_and_varies() -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=4), jitter=0.25, max_interval=timedelta(seconds=100)
    )
    rng = random.Random(7)
    delays = [policy.delay(2, rng).total_seconds() for _ in range(200)]
    assert all(6.0 <= d <= 8.0 for d in delays)  # 8 s base, at most 25 % shorter
    assert len(set(delays)) > 100


def test_retryability_by_class_by_name_and_by_marker() -> None:
    class PaymentDeclined(Exception):
        pass

    policy = RetryPolicy(non_retryable=(KeyError, "PaymentDeclined"))
    assert not policy.is_retryable(KeyError("x"))
    assert not policy.is_retryable(PaymentDeclined())
    assert not policy.is_retryable(NonRetryableError("stop"))
    assert policy.is_retryable(TimeoutError())


def test_input_schema_validation_reports_the_field() -> None:
    wf = make(
        input_schema={
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "number"}},
        }
    )
    wf.task(noop, name="a")
    Registry().register(wf)
    assert wf.validate_input({"amount": 3}) == []
    assert wf.validate_input([]) == ["input must be a JSON object"]
    assert wf.validate_input({}) == ["'amount' is a required property"]
    assert wf.validate_input({"amount": "x"}) == ["amount: 'x' is not of type 'number'"]


def undo(ctx, output):  # noqa: ANN001, ANN201
    return None


def test_compensate_attempted_needs_a_compensation() -> None:
    wf = make()
    wf.task(noop, name="pay", compensate_attempted=True)
    with pytest.raises(DefinitionError, match=r"step 'pay': compensate_attempted=True needs"):
        Registry().register(wf)


def test_compensate_attempted_must_be_a_bool_and_is_described() -> None:
    wf = make()
    wf.task(noop, name="pay", compensate=undo, compensate_attempted="yes")
    with pytest.raises(DefinitionError, match="compensate_attempted must be True or False"):
        Registry().register(wf)
    ok = make("ok")
    ok.task(noop, name="pay", compensate=undo, compensate_attempted=True)
    ok.task(noop, name="plain", compensate=undo)
    Registry().register(ok)
    described = {s["name"]: s for s in ok.describe()["steps"]}
    assert described["pay"]["compensate_attempted"] is True
    assert described["plain"]["compensate_attempted"] is False
    assert ok.steps["plain"].compensate_attempted is False  # the default stays as it was
