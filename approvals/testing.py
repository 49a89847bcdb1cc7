"""The approval side of the workflow test kit (:mod:`orchestration.testing`): decide a
workflow's approval steps as a given person, through the real decision policy, and list the
requests waiting.

``decide`` goes through :func:`approvals.services.approval_decide`, the service the inbox, the
API and email links use: the policy (assignee, group, delegation, self-approval, claims, one
decision per person, a comment to reject) has the last word, and a refusal is a
:class:`DecisionRefused` carrying the policy's code. Use the functions with a
:class:`~orchestration.testing.WorkflowHandle`, or the ``signoff_approvals`` fixture
(``approvals.pytest_plugin``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from orchestration.errors import Conflict, NotAllowed, NotFound
from orchestration.models import WorkflowInstance
from orchestration.testing import KitError, SignoffKit, WorkflowHandle, definition_of

from .definitions import ApprovalStep
from .models import ApprovalRequest, Decision, RequestState
from .selectors import decidable_by
from .services import approval_decide

__all__ = ["ApprovalsKit", "DecisionRefused", "decide", "pending_requests", "request_of"]


class DecisionRefused(KitError):
    """The decision policy refused: ``code`` is its stable code (``not_assignee``,
    ``self_approval``, ``already_decided``, ``claimed``...), ``__cause__`` its error."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


Target = WorkflowHandle | WorkflowInstance | Any


def _instance(target: Target) -> WorkflowInstance:
    pk = target.id if isinstance(target, WorkflowHandle) else getattr(target, "pk", target)
    instance = WorkflowInstance.objects.filter(pk=pk).first()
    if instance is None:
        raise KitError(f"no workflow instance {pk}")
    return instance


def _user(as_user: Any) -> Any:
    if not isinstance(as_user, str):
        return as_user
    model = get_user_model()
    user = model.objects.filter(**{model.USERNAME_FIELD: as_user}).first()
    if user is None:
        raise KitError(f"no user {as_user!r}")
    return user


def _check_step(instance: WorkflowInstance, step: str) -> None:
    definition = definition_of(instance.workflow, instance.version)
    spec = definition.steps.get(step)
    approvals = [s.name for s in definition.steps.values() if isinstance(s, ApprovalStep)]
    if not isinstance(spec, ApprovalStep):
        what = f"is a {spec.kind} step" if spec is not None else "is no step"
        raise KitError(
            f"{step!r} {what} of {instance.workflow} v{instance.version}; its approval steps: "
            f"{', '.join(approvals) or 'none'}"
        )


def pending_requests(
    target: Target | None = None, step: str | None = None, *, user: Any = None
) -> list[ApprovalRequest]:
    """Pending approval requests, oldest first: of ``target`` (a handle or an instance; every
    instance when None), of its step ``step``, and with ``user`` only those that person may
    decide now (their inbox: directly, through a group or a delegation)."""
    requests = ApprovalRequest.objects.filter(state=RequestState.PENDING)
    if user is not None:
        requests = decidable_by(_user(user))
    if target is not None:
        instance = _instance(target)
        if step is not None:
            _check_step(instance, step)
        requests = requests.filter(instance=instance)
    if step is not None:
        requests = requests.filter(step_name=step)
    return list(requests.order_by("created_at", "pk"))


def request_of(target: Target, step: str) -> ApprovalRequest:
    """The pending request of approval step ``step``, or a :class:`KitError` saying why there
    is none (the step not reached yet, or decided, expired, cancelled)."""
    instance = _instance(target)
    _check_step(instance, step)
    found = pending_requests(instance, step)
    if found:
        return found[-1]
    rounds = ApprovalRequest.objects.filter(instance=instance, step_name=step).order_by("round")
    seen = ", ".join(f"round {r.round} {r.state}" for r in rounds) or "none opened yet"
    state = instance.steps.filter(name=step).values_list("state", flat=True).first()
    raise KitError(
        f"{step!r} has no pending request (step {state}, instance {instance.state}; "
        f"requests: {seen})"
    )


def decide(
    target: Target,
    step: str,
    *,
    as_user: Any,
    outcome: str = "approve",
    comment: str = "",
    run: bool = True,
) -> Decision:
    """Decide approval step ``step`` as ``as_user`` (a user or a username): ``outcome``
    ``"approve"`` or ``"reject"`` (a rejection needs a comment unless the step says
    otherwise). With a handle and ``run``, the workflow then runs until idle.

    Raises :class:`DecisionRefused` when the policy refuses this person (with its code),
    :class:`KitError` when there is nothing to decide, and the service's ``InvalidInput``
    for an unknown outcome or a missing comment."""
    request = request_of(target, step)
    user = _user(as_user)
    try:
        decision = approval_decide(
            request_id=request.pk, user=user, outcome=outcome, comment=comment
        )
    except (NotAllowed, NotFound, Conflict) as exc:
        who = getattr(user, "get_username", lambda: str(user))()
        raise DecisionRefused(
            f"{who} may not {outcome} {step!r} of {request.workflow} "
            f"{request.instance_id}: {exc.message} (code {exc.code})",
            code=exc.code,
        ) from exc
    if run and isinstance(target, WorkflowHandle):
        target.run_until_idle()
    return decision


class ApprovalsKit:
    """The approval helpers bound to a kit (the ``signoff_approvals`` fixture)."""

    def __init__(self, kit: SignoffKit) -> None:
        self.kit = kit

    def decide(
        self,
        target: Target,
        step: str,
        *,
        as_user: Any,
        outcome: str = "approve",
        comment: str = "",
    ) -> Decision:
        """:func:`decide`, then run the kit until idle (whatever ``target`` is)."""
        decision = decide(target, step, as_user=as_user, outcome=outcome, comment=comment)
        self.kit.run_until_idle()
        return decision

    def pending_requests(
        self, target: Target | None = None, step: str | None = None, *, user: Any = None
    ) -> list[ApprovalRequest]:
        return pending_requests(target, step, user=user)

    def request_of(self, target: Target, step: str) -> ApprovalRequest:
        return request_of(target, step)
