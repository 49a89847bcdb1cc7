"""The operator actions on an approval request's admin page, as a mixin of its ModelAdmin:
reassign (one request, or the selected ones in bulk), decide on behalf of an assignee, and
release or take over a claim. Each is declared once as an
:class:`~orchestration.operator_actions.Operation` and runs through the project's one
confirm-and-run flow (the confirm page, the form, one service call, a business error shown on
the form or as a message); the decision policy answers in the service, and a refusal shows the
form again with why (400, 403). Here only the pages' URLs, titles and where to go back to are
chosen."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from orchestration.admin.shared import confirm_page
from orchestration.operator_actions import Operation, confirm_and_run, confirm_and_run_each
from orchestration.presentation import status_url

from .. import claims, policy, selectors, services
from ..models import ApprovalRequest, Channel
from .forms import ClaimNoteForm, DecideOnBehalfForm, ReassignForm, TakeOverClaimForm

User = get_user_model()


def _reassign(obj: ApprovalRequest, user: Any, data: dict[str, Any]) -> Any:
    return services.approval_reassign(
        request_id=obj.pk,
        operator=user,
        users=data["users"],
        groups=data["groups"],
        reason=data["reason"],
    )


def _current_assignees(obj: ApprovalRequest) -> dict[str, Any]:
    return {
        "initial": {
            "users": ", ".join(u.get_username() for u in obj.assignee_users.all()),
            "groups": ", ".join(g.name for g in obj.assignee_groups.all()),
        }
    }


def _undecided_assignees(obj: ApprovalRequest) -> dict[str, Any]:
    decided = set(obj.decisions.values_list("assignee_id", flat=True))
    candidates = (
        User.objects.filter(is_active=True)
        .filter(Q(approval_requests=obj) | Q(groups__approval_requests=obj))
        .exclude(pk__in=decided)
        .distinct()
        .order_by("username")
    )
    return {"candidates": [u.get_username() for u in candidates]}


def _decide_on_behalf(obj: ApprovalRequest, user: Any, data: dict[str, Any]) -> Any:
    return services.approval_decide_on_behalf(
        request_id=obj.pk,
        operator=user,
        assignee=User.objects.get(username=data["assignee"]),
        outcome=data["outcome"],
        comment=data["comment"],
        reason=data["reason"],
    )


REASSIGN = Operation(
    name="reassign",
    label=gettext_lazy("Reassign"),
    done=gettext_lazy("reassigned"),
    question=gettext_lazy(
        "Replace the assignees of this pending request. People no longer assigned lose "
        "their email links; newcomers get mail."
    ),
    form=ReassignForm,
    form_kwargs=_current_assignees,
    run=_reassign,
)
REASSIGN_EACH = Operation(
    name="reassign_selected",
    label=gettext_lazy("Reassign approval requests"),
    done=gettext_lazy("reassigned"),
    question=gettext_lazy(
        "Replace the assignees of each selected pending request. Decided requests are refused."
    ),
    form=ReassignForm,
    run=_reassign,
)
DECIDE_ON_BEHALF = Operation(
    name="decide",
    label=gettext_lazy("Decide on behalf"),
    done=gettext_lazy("decided on behalf"),
    question=gettext_lazy(
        "Record an assignee's decision for them (e.g. given by phone). It counts as "
        "theirs under the request's policy; you and your reason are recorded."
    ),
    form=DecideOnBehalfForm,
    form_kwargs=_undecided_assignees,
    run=_decide_on_behalf,
    success=lambda obj, data: (
        _("Decision recorded for %(name)s on “%(title)s”.")
        % {"name": data["assignee"], "title": obj.title}
    ),
)
# Who may release or take over is the decision policy's answer (in the service), not a model
# permission: viewing the request is enough to ask. ``{holder}`` is filled in on the page.
RELEASE_CLAIM = Operation(
    name="release_claim",
    label=gettext_lazy("Release the claim"),
    done=gettext_lazy("released"),
    question=gettext_lazy(
        "End {holder}'s claim on this request: any assignee may then decide it. Releasing "
        "someone else's claim needs approvals.override_claim and is recorded as forced."
    ),
    form=ClaimNoteForm,
    run=lambda obj, user, data: claims.approval_release(
        request_id=obj.pk, user=user, note=data["note"], channel=Channel.ADMIN
    ),
    success=lambda obj, data: _("Claim released."),
    operators_only=False,
)
TAKE_OVER_CLAIM = Operation(
    name="take_over_claim",
    label=gettext_lazy("Take the claim over"),
    done=gettext_lazy("taken over"),
    question=gettext_lazy(
        "Take {holder}'s claim over: you must be someone who may decide this request (a "
        "hard claim also needs approvals.override_claim). Your note is recorded."
    ),
    form=TakeOverClaimForm,
    run=lambda obj, user, data: claims.approval_take_over(
        request_id=obj.pk, user=user, note=data["note"], channel=Channel.ADMIN
    ),
    success=lambda obj, data: _("Claim taken over: the request is yours to decide in the inbox."),
    operators_only=False,
)


class OperatorActionsMixin:
    """The pages behind the request page's operator buttons (offered from what the policy
    could allow; it is asked again on POST)."""

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if obj is not None:
            extra["status_url"] = status_url(obj.instance_id)
            # Buttons the decision policy could allow (it is asked again on POST).
            offered = policy.operator_actions(request.user, obj)
            extra["operations"] = [
                (label, reverse(f"admin:approvals_approvalrequest_{name}", args=[obj.pk]))
                for name, label in [("reassign", "Reassign"), ("decide", "Decide on behalf")]
                if name in offered
            ] + self._claim_operations(request, obj)
        return super().change_view(request, object_id, form_url, extra)

    def _claim_operations(self, request: HttpRequest, obj: ApprovalRequest) -> list[Any]:
        """The claim buttons the policy could allow this user here (asked again on POST)."""
        if obj.claim_state != "claimed":
            return []
        may_decide = selectors.decidable_by(request.user).filter(pk=obj.pk).exists()
        offered = policy.claim_actions(request.user, obj, may_decide=may_decide)
        return [
            (label, reverse(f"admin:approvals_approvalrequest_{name}", args=[obj.pk]))
            for act, name, label in [
                ("release", "release_claim", "Release the claim"),
                ("take_over", "take_over_claim", "Take the claim over"),
            ]
            if act in offered
        ]

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:object_id>/release-claim/",
                wrap(self.release_claim_view),
                name="approvals_approvalrequest_release_claim",
            ),
            path(
                "<int:object_id>/take-over-claim/",
                wrap(self.take_over_claim_view),
                name="approvals_approvalrequest_take_over_claim",
            ),
            path(
                "<int:object_id>/reassign/",
                wrap(self.reassign_view),
                name="approvals_approvalrequest_reassign",
            ),
            path(
                "<int:object_id>/decide/",
                wrap(self.decide_view),
                name="approvals_approvalrequest_decide",
            ),
            *super().get_urls(),
        ]

    def _back(self, obj: ApprovalRequest) -> str:
        return reverse("admin:approvals_approvalrequest_change", args=[obj.pk])

    def _operate(self, request: HttpRequest, object_id: int, op: Operation) -> HttpResponse:
        """``op`` on one request: 405 unless GET or POST, 404 unless the user may view it, 403
        unless they may operate (when ``op`` is for operators only); then the confirm page, or
        the service called and back to the request's page."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        obj = self.get_object(request, str(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such approval request.")
        if op.operators_only and not self.has_operate_permission(request):
            raise PermissionDenied("You may not operate approval requests.")
        confirmation = confirm_and_run(
            request, op, obj, subject=_("“%(title)s”") % {"title": obj.title}
        )
        if confirmation is None:
            return HttpResponseRedirect(self._back(obj))
        question = op.question
        if "{holder}" in question:  # a claim's page names its holder
            question = question.format(holder=selectors.claim_holder_name(obj) or _("nobody"))
        return confirm_page(
            self,
            request,
            title=f"{op.title}: {obj.title}",
            question=question,
            form=confirmation.form,
            objects=[obj],
            count=1,
            danger=op.danger,
            back_url=self._back(obj),
            status=confirmation.status,
        )

    def reassign_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return self._operate(request, object_id, REASSIGN)

    def decide_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return self._operate(request, object_id, DECIDE_ON_BEHALF)

    def release_claim_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return self._operate(request, object_id, RELEASE_CLAIM)

    def take_over_claim_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return self._operate(request, object_id, TAKE_OVER_CLAIM)

    def reassign_bulk(self, request: HttpRequest, queryset: QuerySet) -> Any:
        """The bulk action: a confirmation page first, then one reassignment per request."""
        if not self.has_operate_permission(request):
            raise PermissionDenied("You may not operate approval requests.")
        confirmation = confirm_and_run_each(
            request,
            REASSIGN_EACH,
            queryset.order_by("created_at"),
            noun="request",
            refused_noun="",
            label=lambda obj: f"#{obj.pk} {obj.title}",
        )
        if confirmation is None:
            return None  # back to the (filtered) list
        return confirm_page(
            self,
            request,
            title=REASSIGN_EACH.title,
            question=REASSIGN_EACH.question,
            form=confirmation.form,
            objects=list(queryset[:50]),
            count=queryset.count(),
            action=REASSIGN_EACH.name,
            select_across=request.POST.get("select_across") == "1",
            selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            back_url=request.get_full_path(),
            status=confirmation.status,
        )
