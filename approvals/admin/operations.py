"""The operator actions on an approval request's admin page, as a mixin of its ModelAdmin:
reassign (one request, or the selected ones in bulk), decide on behalf of an assignee, and
release or take over a claim. Each is a confirm page whose POST calls one service; the
decision policy answers there, and a refusal shows the form again with why (400, 403)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
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

from orchestration.admin import confirm_page, report_to
from orchestration.errors import InvalidInput, NotAllowed, SignoffError
from orchestration.views import Report, status_url

from .. import claims, policy, selectors, services
from ..models import ApprovalRequest, Channel
from .forms import ClaimNoteForm, DecideOnBehalfForm, ReassignForm, TakeOverClaimForm

User = get_user_model()


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

    def _request_for(self, request: HttpRequest, object_id: int) -> ApprovalRequest:
        obj = self.get_object(request, str(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such approval request.")
        if not self.has_operate_permission(request):
            raise PermissionDenied("You may not operate approval requests.")
        return obj

    def _back(self, obj: ApprovalRequest) -> str:
        return reverse("admin:approvals_approvalrequest_change", args=[obj.pk])

    def _finish(
        self, request: HttpRequest, obj: ApprovalRequest, form: forms.Form, act: Any, done: str
    ) -> HttpResponse | int:
        """Call the service; a status means: show the form again with the error on it (400
        for bad input, 403 when the decision policy refused)."""
        try:
            act()
        except (InvalidInput, NotAllowed) as exc:
            # Bad input or a refusal of the decision policy: the form again, with why.
            form.add_error(None, exc.message)
            return exc.status
        except SignoffError as exc:
            self.message_user(request, f"Refused: {exc.message}", messages.ERROR)
            return HttpResponseRedirect(self._back(obj))
        self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(self._back(obj))

    def reassign_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        obj = self._request_for(request, object_id)
        confirmed = request.method == "POST" and "confirm" in request.POST
        initial = {
            "users": ", ".join(u.get_username() for u in obj.assignee_users.all()),
            "groups": ", ".join(g.name for g in obj.assignee_groups.all()),
        }
        form = ReassignForm(request.POST if confirmed else None, initial=initial)
        status = 400 if confirmed else 200
        if confirmed and form.is_valid():
            data = form.cleaned_data
            response = self._finish(
                request,
                obj,
                form,
                lambda: services.approval_reassign(
                    request_id=obj.pk,
                    operator=request.user,
                    users=data["users"],
                    groups=data["groups"],
                    reason=data["reason"],
                ),
                f"“{obj.title}” reassigned.",
            )
            if not isinstance(response, int):
                return response
            status = response
        return confirm_page(
            self,
            request,
            title=f"Reassign: {obj.title}",
            question="Replace the assignees of this pending request. People no longer "
            "assigned lose their email links; newcomers get mail.",
            form=form,
            objects=[obj],
            count=1,
            back_url=self._back(obj),
            status=status,
        )

    def _claim_request_for(self, request: HttpRequest, object_id: int) -> ApprovalRequest:
        # Who may release or take over is the decision policy's answer (on POST), not a
        # model permission: viewing the request is enough to ask.
        obj = self.get_object(request, str(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such approval request.")
        return obj

    def _claim_view(
        self,
        request: HttpRequest,
        object_id: int,
        *,
        form_class: type[forms.Form],
        title: str,
        question: str,
        act: Any,
        done: str,
    ) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        obj = self._claim_request_for(request, object_id)
        confirmed = request.method == "POST" and "confirm" in request.POST
        form = form_class(request.POST if confirmed else None)
        status = 400 if confirmed else 200
        if confirmed and form.is_valid():
            response = self._finish(
                request, obj, form, lambda: act(obj, form.cleaned_data["note"]), done
            )
            if not isinstance(response, int):
                return response
            status = response
        holder = selectors.claim_holder_name(obj) or "nobody"
        return confirm_page(
            self,
            request,
            title=f"{title}: {obj.title}",
            question=question.format(holder=holder),
            form=form,
            objects=[obj],
            count=1,
            back_url=self._back(obj),
            status=status,
        )

    def release_claim_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return self._claim_view(
            request,
            object_id,
            form_class=ClaimNoteForm,
            title="Release the claim",
            question="End {holder}'s claim on this request: any assignee may then decide "
            "it. Releasing someone else's claim needs approvals.override_claim and is "
            "recorded as forced.",
            act=lambda obj, note: claims.approval_release(
                request_id=obj.pk, user=request.user, note=note, channel=Channel.ADMIN
            ),
            done="Claim released.",
        )

    def take_over_claim_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return self._claim_view(
            request,
            object_id,
            form_class=TakeOverClaimForm,
            title="Take the claim over",
            question="Take {holder}'s claim over: you must be someone who may decide this "
            "request (a hard claim also needs approvals.override_claim). Your note is "
            "recorded.",
            act=lambda obj, note: claims.approval_take_over(
                request_id=obj.pk, user=request.user, note=note, channel=Channel.ADMIN
            ),
            done="Claim taken over: the request is yours to decide in the inbox.",
        )

    def decide_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        obj = self._request_for(request, object_id)
        decided = set(obj.decisions.values_list("assignee_id", flat=True))
        candidates = (
            User.objects.filter(is_active=True)
            .filter(Q(approval_requests=obj) | Q(groups__approval_requests=obj))
            .exclude(pk__in=decided)
            .distinct()
            .order_by("username")
        )
        names = [u.get_username() for u in candidates]
        confirmed = request.method == "POST" and "confirm" in request.POST
        form = DecideOnBehalfForm(request.POST if confirmed else None, candidates=names)
        status = 400 if confirmed else 200
        if confirmed and form.is_valid():
            data = form.cleaned_data
            assignee = User.objects.get(username=data["assignee"])
            response = self._finish(
                request,
                obj,
                form,
                lambda: services.approval_decide_on_behalf(
                    request_id=obj.pk,
                    operator=request.user,
                    assignee=assignee,
                    outcome=data["outcome"],
                    comment=data["comment"],
                    reason=data["reason"],
                ),
                f"Decision recorded for {assignee.get_username()} on “{obj.title}”.",
            )
            if not isinstance(response, int):
                return response
            status = response
        return confirm_page(
            self,
            request,
            title=f"Decide on behalf: {obj.title}",
            question="Record an assignee's decision for them (e.g. given by phone). It counts "
            "as theirs under the request's policy; you and your reason are recorded.",
            form=form,
            objects=[obj],
            count=1,
            back_url=self._back(obj),
            status=status,
        )

    def reassign_bulk(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not self.has_operate_permission(request):
            raise PermissionDenied("You may not operate approval requests.")
        confirmed = "confirm" in request.POST
        form = ReassignForm(request.POST if confirmed else None)
        if confirmed and form.is_valid():
            data = form.cleaned_data
            report = Report()
            for obj in queryset.order_by("created_at"):
                try:
                    services.approval_reassign(
                        request_id=obj.pk,
                        operator=request.user,
                        users=data["users"],
                        groups=data["groups"],
                        reason=data["reason"],
                    )
                except SignoffError as exc:
                    report.refused.append((f"#{obj.pk} {obj.title}", exc.message))
                else:
                    report.done.append(obj)
            lines = []
            if report.done:
                n = len(report.done)
                lines.append((messages.SUCCESS, f"{n} request{'s' if n != 1 else ''} reassigned."))
            if report.refused:
                shown = "; ".join(f"{label}: {why}" for label, why in report.refused[:20])
                more = f"; and {len(report.refused) - 20} more" if len(report.refused) > 20 else ""
                level = messages.WARNING if report.done else messages.ERROR
                lines.append((level, f"{len(report.refused)} refused — {shown}{more}"))
            report_to(self, request, lines)
            return None
        return confirm_page(
            self,
            request,
            title="Reassign approval requests",
            question="Replace the assignees of each selected pending request. Decided "
            "requests are refused.",
            form=form,
            objects=list(queryset[:50]),
            count=queryset.count(),
            action="reassign_selected",
            select_across=request.POST.get("select_across") == "1",
            selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            back_url=request.get_full_path(),
            status=400 if confirmed else 200,
        )
