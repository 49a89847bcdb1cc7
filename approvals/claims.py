"""Claims: "I'm on it" on an approval request assigned to a group or to several people.

While a claim holds, nobody but the claimant decides the request (every channel: inbox, bulk,
API, email links, on-behalf decisions — the decision policy's ``decide`` rule). A claim ends
when its claimant releases it, someone takes it over (``soft`` claims: any other assignee
who may decide, with a note; ``hard`` claims: only a holder of ``approvals.override_claim``),
an ``approvals.override_claim`` holder releases it, a reassignment leaves the claimant
unable to decide, or its claimant stays idle past the claim's idle time (the claim sweeper,
:func:`approvals.sweepers.sweep_claims`, records the expiry; an idle claim stops counting at
once).

Every service here has the shape of :mod:`approvals.deciding`: one transaction; the instance
locked first, then the request (``FOR NO KEY UPDATE``); an idle claim found under the lock is
expired first (``approval_claim_expired``), so the history reads in order; then the policy
(:func:`approvals.policy.authorize`, acts ``claim``, ``release``, ``take_over``) is asked;
one django-fsm transition of ``claim_state`` and one event per change. A refusal raises and
rolls everything back. Two people claiming at once: the second waits for the instance lock,
then finds the first one's claim and is told who holds it (``Conflict``, code ``claimed``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext_noop

from orchestration import engine
from orchestration.errors import Conflict, InvalidInput, Message, SignoffError
from orchestration.jsonsafe import string_problem
from orchestration.models import StepRun

from . import policy
from .definitions import ApprovalStep
from .locking import lock_request, step_run_of
from .models import ApprovalRequest, Channel, ClaimState

MAX_NOTE = 500
CLAIM_FIELDS = ["claim_state", "claimed_by", "claimed_at", "claim_active_at", "claim_expires_at"]


def idle_time(spec: ApprovalStep | None) -> timedelta | None:
    """How long a claim on a request of ``spec`` lasts without activity (None: forever)."""
    if spec is not None and spec.claim_idle is not None:
        return spec.claim_idle
    seconds = int(getattr(settings, "SIGNOFF_CLAIM_IDLE_SECONDS", 8 * 3600))
    return timedelta(seconds=seconds) if seconds > 0 else None


def _spec(locked: engine.LockedInstance, request: ApprovalRequest) -> ApprovalStep | None:
    spec = locked.definition.steps.get(request.step_name) if locked.definition else None
    return spec if isinstance(spec, ApprovalStep) else None


def _expires(locked: engine.LockedInstance, request: ApprovalRequest) -> datetime | None:
    idle = idle_time(_spec(locked, request))
    return locked.journal.now + idle if idle is not None else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _clean_note(note: Any, *, required: bool) -> str:
    if note is None:
        note = ""
    if not isinstance(note, str):
        raise InvalidInput(gettext_noop("note must be a string"), code="invalid")
    note = note.strip()
    if required and not note:
        raise InvalidInput(
            gettext_noop("a note is required: tell the claimant why you take it over"),
            code="note_required",
        )
    if len(note) > MAX_NOTE:
        raise InvalidInput(
            Message(gettext_noop("the note is longer than %(max)s characters"), max=MAX_NOTE),
            code="invalid",
        )
    if string_problem(note):
        raise InvalidInput(
            Message(gettext_noop("note: %(problem)s"), problem=string_problem(note)), code="invalid"
        )
    return note


def _check_channel(channel: str) -> str:
    if channel not in Channel.values:
        raise InvalidInput(f"channel must be one of {', '.join(Channel.values)}")
    return channel


def _locked_request(
    request_id: Any, user: Any
) -> tuple[engine.LockedInstance, ApprovalRequest, StepRun | None]:
    """Lock the instance and the request (engine order), and expire an idle claim first."""
    step_run_id = step_run_of(request_id)
    locked, request = lock_request(request_id, step_run_id, user)
    step = locked.step_by_id(step_run_id)
    if not claim_expire_if_idle(locked, request, step):
        _end_if_claimant_inactive(locked, request, step)
    return locked, request, step


def _end_if_claimant_inactive(
    locked: engine.LockedInstance, request: ApprovalRequest, step: StepRun | None
) -> None:
    """A claim whose claimant was deactivated (or deleted) no longer counts; end it, so the
    act that follows starts from an unclaimed request (``approval_released``, actor
    ``system``, with the reason)."""
    if request.claim_state != ClaimState.CLAIMED:
        return
    claimant = request.claimed_by
    if claimant is not None and claimant.is_active:
        return
    data = {
        "user": claimant.get_username() if claimant is not None else None,
        "reason": "claimant deactivated" if claimant is not None else "claimant removed",
    }
    request.release_claim()
    request.save(update_fields=CLAIM_FIELDS)
    locked.record("approval_released", step=step, data=data, actor="system")


def claim_expire_if_idle(
    locked: engine.LockedInstance,
    request: ApprovalRequest,
    step: StepRun | None,
    now: datetime | None = None,
) -> bool:
    """Under the locks: end the claim if its claimant stayed idle past its expiry (writes
    ``approval_claim_expired``, actor ``system``). Returns whether it did."""
    now = now or locked.journal.now
    if (
        request.claim_state != ClaimState.CLAIMED
        or request.claim_expires_at is None
        or request.claim_expires_at > now
    ):
        return False
    data = {
        "user": policy.claimant_name(request) if request.claimed_by_id else None,
        "claimed_at": _iso(request.claimed_at),
        "last_active_at": _iso(request.claim_active_at),
    }
    request.expire_claim()
    request.save(update_fields=CLAIM_FIELDS)
    locked.record("approval_claim_expired", step=step, data=data, actor="system")
    return True


def approval_claim(*, request_id: Any, user: Any, channel: str = Channel.WEB) -> ApprovalRequest:
    """``user`` claims the request ("I'm on it"). Asks the policy (act ``claim``): someone who
    may decide it, a request that takes claims, not claimed by anyone else (``Conflict``
    ``claimed``, "claimed by X since T"). Writes ``approval_claimed``. The claimant claiming
    again renews the claim (its activity and expiry move on; no event)."""
    channel = _check_channel(channel)
    with transaction.atomic():
        locked, request, step = _locked_request(request_id, user)
        now = locked.journal.now
        policy.authorize(
            policy.Act.CLAIM, user=user, request=request, instance=locked.instance, now=now
        )
        expires_at = _expires(locked, request)
        if request.claim_state == ClaimState.CLAIMED:  # the claimant's own: renew it
            request.claim_active_at = now
            request.claim_expires_at = expires_at
            request.save(update_fields=["claim_active_at", "claim_expires_at"])
        else:
            request.claim(user, now, expires_at)
            request.save(update_fields=CLAIM_FIELDS)
            locked.record(
                "approval_claimed",
                step=step,
                data={
                    "user": user.get_username(),
                    "mode": request.claim_mode,
                    "expires_at": _iso(expires_at),
                    "channel": channel,
                },
            )
        locked.journal.flush()
        return request


def approval_release(
    *, request_id: Any, user: Any, note: str = "", channel: str = Channel.WEB
) -> ApprovalRequest:
    """End the claim: its claimant, or (forced) a holder of ``approvals.override_claim``
    who is not the requester (policy act ``release``). Writes ``approval_released`` (with
    ``forced`` and the note when someone else released it)."""
    channel = _check_channel(channel)
    note = _clean_note(note, required=False)
    with transaction.atomic():
        locked, request, step = _locked_request(request_id, user)
        grant = policy.authorize(
            policy.Act.RELEASE,
            user=user,
            request=request,
            instance=locked.instance,
            now=locked.journal.now,
        )
        claimant = policy.claimant_name(request) if request.claimed_by_id else None
        request.release_claim()
        request.save(update_fields=CLAIM_FIELDS)
        locked.record(
            "approval_released",
            step=step,
            data={
                "user": claimant,
                "channel": channel,
                **({"forced": True} if grant.on_behalf else {}),
                **({"note": note} if note else {}),
            },
        )
        locked.journal.flush()
        return request


def approval_take_over(
    *,
    request_id: Any,
    user: Any,
    note: str,
    expected_claimant: str | None = None,
    channel: str = Channel.WEB,
) -> ApprovalRequest:
    """``user`` takes the claim over, with a mandatory note (policy act ``take_over``: a
    ``soft`` claim by anyone else who may decide it; a ``hard`` one only with
    ``approvals.override_claim``). ``expected_claimant``: the username the caller saw holding
    the claim; if someone else holds it now (two took it over at once), ``Conflict``
    ``claimed`` says who, and nothing changes. Writes ``approval_claim_taken_over``."""
    channel = _check_channel(channel)
    note = _clean_note(note, required=True)
    with transaction.atomic():
        locked, request, step = _locked_request(request_id, user)
        now = locked.journal.now
        policy.authorize(
            policy.Act.TAKE_OVER, user=user, request=request, instance=locked.instance, now=now
        )
        previous = policy.claimant_name(request) if request.claimed_by_id else None
        if expected_claimant is not None and expected_claimant != previous:
            raise Conflict(policy.claimed_message(request), code="claimed")
        data = {
            "from": previous,
            "user": user.get_username(),
            "mode": request.claim_mode,
            "note": note,
            "channel": channel,
        }
        expires_at = _expires(locked, request)
        request.take_over_claim(user, now, expires_at)
        request.save(update_fields=CLAIM_FIELDS)
        locked.record(
            "approval_claim_taken_over", step=step, data={**data, "expires_at": _iso(expires_at)}
        )
        locked.journal.flush()
        return request


def claim_drop_if_ineligible(
    locked: engine.LockedInstance, request: ApprovalRequest, step: StepRun | None, *, reason: str
) -> bool:
    """Under the locks, after the assignees changed (a reassignment): release the claim if its
    claimant may no longer decide the request (writes ``approval_released`` with the
    reason). Returns whether it did."""
    if request.claim_state != ClaimState.CLAIMED:
        return False
    claimant = request.claimed_by
    if claimant is not None:
        try:
            policy.authorize(
                policy.Act.DECIDE,
                user=claimant,
                request=request,
                instance=locked.instance,
                now=locked.journal.now,
            )
        except SignoffError:
            pass
        else:
            return False
    data = {"user": policy.claimant_name(request) if claimant else None, "reason": reason}
    request.release_claim()
    request.save(update_fields=CLAIM_FIELDS)
    locked.record("approval_released", step=step, data=data)
    return True
