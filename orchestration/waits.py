"""Steps that wait: ``signal`` (an external callback) and ``timer`` (sleep for or until).

Both put the step in ``waiting`` with a deadline in ``timeout_at``; the waiting-deadline
sweeper acts when it passes (a timer fires; a signal wait applies ``on_timeout``).

Example::

    signal_step(wf, "setup_completed", after=["provision"], timeout=timedelta(days=7),
                on_timeout="cancel", schema={"type": "object", "required": ["admin_email"]})
    timer_step(wf, "cool_off", after=["setup_completed"], duration=timedelta(hours=1))
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jsonschema
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import sealing
from .definitions import Predicate, StepContext, StepSpec, Workflow
from .engine import LockedInstance, definition_of, lock_instance, step_context, stored_output
from .errors import Conflict, InvalidInput, NotAllowed, NotFound
from .journal import Journal
from .jsonsafe import storable_json_problem, string_problem
from .kinds import StepKind, register_kind
from .models import Signal, StepRun, StepState

S = StepState
ON_TIMEOUT = ("fail", "continue", "cancel")


@dataclass
class SignalStep(StepSpec):
    """Wait for ``POST /api/v1/instances/{id}/signals/{signal}/``; its payload is the output."""

    signal: str = ""
    schema: dict[str, Any] | None = None
    timeout: timedelta | None = None
    on_timeout: str = "fail"
    default: dict[str, Any] | None = None
    kind: str = "signal"

    def problems(self) -> list[str]:
        found = []
        if self.on_timeout not in ON_TIMEOUT:
            found.append(f"on_timeout must be one of {', '.join(ON_TIMEOUT)}")
        if self.timeout is not None and (
            not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0)
        ):
            found.append("timeout must be a positive timedelta")
        if self.schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                found.append(f"invalid schema: {exc.message}")
        return found

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "signal": self.signal,
            "schema": self.schema,
            "timeout": self.timeout.total_seconds() if self.timeout else None,
            "on_timeout": self.on_timeout,
        }


@dataclass
class TimerStep(StepSpec):
    """Sleep for ``duration``, or until the time ``until(ctx)`` returns (or the ISO time at
    the input path ``until_input``)."""

    duration: timedelta | None = None
    until: Callable[[StepContext], datetime] | None = None
    until_input: str | None = None
    kind: str = "timer"

    def problems(self) -> list[str]:
        given = [x for x in (self.duration, self.until, self.until_input) if x is not None]
        if len(given) != 1:
            return ["a timer needs exactly one of duration, until or until_input"]
        if self.duration is not None and (
            not isinstance(self.duration, timedelta) or self.duration < timedelta(0)
        ):
            return ["duration must be a non-negative timedelta"]
        return []

    def fire_at(self, ctx: StepContext, now: datetime) -> datetime:
        if self.duration is not None:
            return now + self.duration
        if self.until is not None:
            return self.until(ctx)
        value: Any = ctx.input
        for part in (self.until_input or "").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        moment = parse_datetime(value) if isinstance(value, str) else None
        if moment is None:
            return now  # nothing usable to wait for: fire at once, and say so in the output
        return moment if moment.tzinfo else timezone.make_aware(moment)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "duration": self.duration.total_seconds() if self.duration else None,
            "until_input": self.until_input,
        }


def signal_step(
    workflow: Workflow,
    name: str,
    *,
    after: Iterable[str] = (),
    when: Predicate | None = None,
    signal: str | None = None,
    schema: dict[str, Any] | None = None,
    timeout: timedelta | None = None,
    on_timeout: str = "fail",
    default: dict[str, Any] | None = None,
) -> SignalStep:
    """Add a step that waits for the signal ``signal`` (default: the step's name).
    ``on_timeout``: ``fail`` the instance, ``continue`` with ``default`` as the output, or
    ``cancel`` the instance."""
    step = SignalStep(
        name=name,
        after=tuple([after] if isinstance(after, str) else after),
        when=when,
        signal=signal or name,
        schema=schema,
        timeout=timeout,
        on_timeout=on_timeout,
        default=default,
    )
    workflow.add(step)
    return step


def timer_step(
    workflow: Workflow,
    name: str,
    *,
    after: Iterable[str] = (),
    when: Predicate | None = None,
    duration: timedelta | None = None,
    until: Callable[[StepContext], datetime] | None = None,
    until_input: str | None = None,
) -> TimerStep:
    step = TimerStep(
        name=name,
        after=tuple([after] if isinstance(after, str) else after),
        when=when,
        duration=duration,
        until=until,
        until_input=until_input,
    )
    workflow.add(step)
    return step


# -- kinds -------------------------------------------------------------------------------------


def _resolve(step: StepRun, output: Any, journal: Journal) -> None:
    step.resolve(stored_output(journal.instance, step.name, output))
    step.finished_at = journal.now
    step.timeout_at = None
    journal.record("step_succeeded", step=step)


class SignalKind(StepKind):
    name = "signal"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        assert isinstance(spec, SignalStep)
        step_run.wait()
        step_run.started_at = now
        step_run.timeout_at = now + spec.timeout if spec.timeout else None
        journal.record(
            "step_waiting",
            step=step_run,
            data={
                "signal": spec.signal,
                "timeout_at": step_run.timeout_at.isoformat() if step_run.timeout_at else None,
            },
        )
        early = (
            Signal.objects.select_for_update()
            .filter(instance=journal.instance, name=spec.signal, consumed_at__isnull=True)
            .order_by("received_at", "id")
            .first()
        )
        if early is not None:
            payload = sealing.open_value(early.payload, where=f"signal {spec.signal} payload")
            early.consumed_at = now
            early.step = step_run.name
            early.save(update_fields=["consumed_at", "step"])
            journal.record(
                "signal_consumed",
                step=step_run,
                data={"signal": spec.signal, "received_at": early.received_at.isoformat()},
            )
            _resolve(step_run, payload, journal)

    def timed_out(self, *, locked: LockedInstance, step_run: StepRun, spec: StepSpec) -> bool:
        """No signal in time: apply ``on_timeout``."""
        assert isinstance(spec, SignalStep)
        step = step_run
        journal = locked.journal
        journal.record(
            "step_timed_out", step=step, data={"signal": spec.signal, "on_timeout": spec.on_timeout}
        )
        if spec.on_timeout == "continue":
            _resolve(step, {**(spec.default or {}), "timed_out": True}, journal)
            locked.advance()
        elif spec.on_timeout == "cancel":
            locked.cancel_instance(f"signal {spec.signal} timed out")
        else:
            locked.fail_step(
                step,
                {
                    "type": "signoff.SignalTimeout",
                    "message": f"no {spec.signal} signal in time",
                    "traceback": "",
                },
                reason="signal_timeout",
            )
        return True


class TimerKind(StepKind):
    name = "timer"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        assert isinstance(spec, TimerStep)
        fire = spec.fire_at(step_context(journal, step_run), now)
        step_run.wait()
        step_run.started_at = now
        step_run.timeout_at = fire
        journal.record("step_waiting", step=step_run, data={"until": fire.isoformat()})
        if fire <= now:
            _resolve(step_run, {"fired_at": now.isoformat(), "until": fire.isoformat()}, journal)

    def timed_out(self, *, locked: LockedInstance, step_run: StepRun, spec: StepSpec) -> bool:
        """The timer fires."""
        until = step_run.timeout_at
        _resolve(
            step_run,
            {
                "fired_at": locked.journal.now.isoformat(),
                "until": until.isoformat() if until else None,
            },
            locked.journal,
        )
        locked.advance()
        return True


register_kind(SignalKind())
register_kind(TimerKind())


# -- delivering a signal -----------------------------------------------------------------------


def signal_send(
    *,
    instance_id: Any,
    name: str,
    payload: Any,
    idempotency_key: str | None = None,
    actor: str = "system",
    source: str = "api",
) -> tuple[Signal, bool]:
    """Deliver signal ``name`` to an instance; returns ``(signal, applied)``.

    The waiting step of that signal completes with ``payload`` as its output; if the step is
    not reached yet the signal is kept and consumed when it is. The same ``idempotency_key``
    twice returns the first signal (``applied`` False) and changes nothing. Raises
    :class:`NotFound` (no instance), :class:`InvalidInput` (no such signal in the workflow,
    payload not matching the step's schema) and :class:`Conflict` (instance finished, or the
    step no longer waits: it timed out or already got its signal).
    """
    if not isinstance(name, str) or string_problem(name) or len(name) > 100:
        raise InvalidInput("invalid signal name")
    problem = storable_json_problem(payload)
    if problem:
        raise InvalidInput(f"payload: {problem}", code="invalid_payload")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not idempotency_key.strip()
        or len(idempotency_key) > 200
        or string_problem(idempotency_key)
    ):
        raise InvalidInput(
            "Idempotency-Key must be 1 to 200 characters", code="invalid_idempotency_key"
        )
    with transaction.atomic():
        locked = lock_instance(instance_id=instance_id, actor=actor)
        if locked is None:
            raise NotFound("instance not found")
        if idempotency_key is not None:
            existing = Signal.objects.filter(
                instance=locked.instance, idempotency_key=idempotency_key
            ).first()
            if existing is not None:
                same = existing.name == name and (
                    sealing.open_value(existing.payload, where="signal payload") == payload
                )
                if not same:
                    raise Conflict(
                        "Idempotency-Key was already used for a different signal",
                        code="idempotency_conflict",
                    )
                return existing, False
        definition = definition_of(locked.instance) or Workflow("missing")
        specs = [
            s for s in definition.steps.values() if isinstance(s, SignalStep) and s.signal == name
        ]
        if not specs:
            known = sorted(
                {s.signal for s in definition.steps.values() if isinstance(s, SignalStep)}
            )
            raise InvalidInput(
                f"{locked.instance.workflow} v{locked.instance.version} has no signal {name!r}"
                + (f"; it waits for: {', '.join(known)}" if known else ""),
                code="unknown_signal",
            )
        spec = specs[0]
        if spec.schema is not None:
            errors = sorted(
                jsonschema.Draft202012Validator(spec.schema).iter_errors(payload),
                key=lambda e: list(e.absolute_path),
            )
            if errors:
                raise InvalidInput(
                    "payload does not match the signal's schema",
                    code="invalid_payload",
                    errors={"payload": [e.message for e in errors[:20]]},
                )
        if locked.instance.state != "running":
            raise Conflict(f"instance is {locked.instance.state}", code="invalid_state")
        step = locked.steps[spec.name]
        if step.state not in (S.PENDING, S.WAITING):
            raise Conflict(
                f"step {spec.name} is {step.state}; the signal is too late", code="signal_too_late"
            )
        journal = locked.journal
        signal = Signal(
            instance=locked.instance,
            name=name,
            # A workflow with sensitive fields keeps the payload sealed whole until a step
            # consumes it (the step's output then seals its declared fields).
            payload=sealing.seal_value(payload) if definition.sensitive else payload,
            idempotency_key=idempotency_key,
            source=source,
            actor=actor,
            received_at=journal.now,
        )
        try:
            with transaction.atomic():
                signal.save(force_insert=True)
        except IntegrityError:
            raise Conflict(
                "the same signal is being delivered concurrently", code="idempotency_conflict"
            ) from None
        if step.state == S.WAITING:
            signal.consumed_at = journal.now
            signal.step = step.name
            signal.save(update_fields=["consumed_at", "step"])
            journal.record("signal_received", step=step, data={"signal": name, "source": source})
            _resolve(step, payload, journal)
            locked.advance()
        else:
            journal.record(
                "signal_received", data={"signal": name, "source": source, "early": True}
            )
        journal.flush()
        return signal, True


# -- signed signals (callbacks from systems without a user token) ---------------------------------
#
# X-Signoff-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256(secret, message)>, where message is
#
#     <t> "\n" <METHOD> "\n" <path> "\n" <Idempotency-Key or nothing> "\n" <raw body bytes>
#
# The path is the request's path from /api/v1/ on (it names the instance and the signal), so a
# signature is good for one method, one instance, one signal, one idempotency key and one body,
# within SIGNAL_SIGNATURE_TOLERANCE seconds of t. The first scheme (v1) covered only "<t>.<body>":
# a body signed for one instance was accepted by every instance of the workflow. It is refused
# with a clear code rather than accepted as a weaker fallback.

SIGNAL_SIGNATURE_TOLERANCE = 300
SIGNAL_SIGNATURE_SCHEME = "v2"


def signal_secret(workflow: str) -> str | None:
    return settings.SIGNOFF_SIGNAL_SECRETS.get(workflow)


def signature_message(
    *, stamp: int, method: str, path: str, idempotency_key: str, body: bytes
) -> bytes:
    """The bytes a v2 signal signature is the HMAC-SHA256 of."""
    return f"{stamp}\n{method.upper()}\n{path}\n{idempotency_key}\n".encode() + body


def _digest(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    header: str,
    *,
    method: str,
    path: str,
    body: bytes,
    idempotency_key: str = "",
    tolerance: int = SIGNAL_SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check ``X-Signoff-Signature: t=<unix>,v2=<hex>`` against this request (method, path,
    idempotency key and body; see above). Returns the matching hex digest; raises
    :class:`NotAllowed` saying what is wrong: ``bad_signature`` (malformed, or no match),
    ``unsupported_signature`` (only the retired v1 scheme), ``stale_signature``."""
    stamps: list[str] = []
    given: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise NotAllowed("malformed signature header", code="bad_signature")
        if key == "t":
            stamps.append(value)
        else:
            given.setdefault(key, []).append(value)
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit():
        raise NotAllowed("malformed signature header", code="bad_signature")
    signatures = [s for s in given.get(SIGNAL_SIGNATURE_SCHEME, []) if s]
    if not signatures:
        if given.get("v1"):
            raise NotAllowed(
                "v1 signatures (over the body only) are no longer accepted: sign the method, "
                "path, Idempotency-Key and body as v2 (README, Signals)",
                code="unsupported_signature",
            )
        raise NotAllowed("malformed signature header", code="bad_signature")
    stamp = int(stamps[0])
    now = time.time() if now is None else now
    if abs(now - stamp) > tolerance:
        raise NotAllowed("signature timestamp outside the replay window", code="stale_signature")
    expected = _digest(
        secret,
        signature_message(
            stamp=stamp, method=method, path=path, idempotency_key=idempotency_key, body=body
        ),
    )
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise NotAllowed("signature does not match", code="bad_signature")
    return expected


def sign(
    secret: str,
    body: bytes,
    *,
    path: str,
    method: str = "POST",
    idempotency_key: str = "",
    stamp: int | None = None,
) -> str:
    """The ``X-Signoff-Signature`` value for a signal request (what a sender computes)."""
    stamp = int(time.time()) if stamp is None else stamp
    message = signature_message(
        stamp=stamp, method=method, path=path, idempotency_key=idempotency_key, body=body
    )
    return f"t={stamp},{SIGNAL_SIGNATURE_SCHEME}={_digest(secret, message)}"


# -- the waiting-deadline sweeper ------------------------------------------------------------------
# (it acts on each due step through engine.waiting_step_deadline, which asks the step's kind)


def due_waiting_steps(now: datetime, batch: int) -> list[int]:
    """Ids of ``waiting`` steps whose deadline passed by ``now``, earliest first."""
    return list(
        StepRun.objects.filter(state=S.WAITING, timeout_at__isnull=False, timeout_at__lte=now)
        .order_by("timeout_at")
        .values_list("pk", flat=True)[:batch]
    )
