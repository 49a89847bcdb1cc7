"""Approval requests, decisions and delegations in the admin: read-only, plus two operator
actions through ``approvals.services``: reassign (bulk or one request) and decide on behalf of
an assignee, each with a mandatory reason. Acting needs ``orchestration.operate_instance``.
The request page shows its claim; releasing it (anyone's, with ``approvals.override_claim``)
or taking it over goes through ``approvals.claims``, which asks the decision policy."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from orchestration.admin import (
    ReadOnlyAdminMixin,
    StrictActionsMixin,
    confirm_page,
    json_block,
    pill,
    report_to,
)
from orchestration.errors import InvalidInput, NotAllowed, SignoffError
from orchestration.views import Report, status_url

from . import claims, policy, selectors, services
from .models import DECISIONS, ActionToken, ApprovalRequest, Channel, Decision, Delegation

User = get_user_model()


def _names(value: str) -> list[str]:
    return sorted({part.strip() for part in value.replace("\n", ",").split(",") if part.strip()})


class ReassignForm(forms.Form):
    users = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Usernames, comma-separated. They replace the current assignees.",
    )
    groups = forms.CharField(
        required=False, max_length=2000, help_text="Group names, comma-separated."
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required; recorded on the approval_reassigned event.",
    )

    def clean_users(self) -> list[str]:
        return _names(self.cleaned_data["users"])

    def clean_groups(self) -> list[str]:
        return _names(self.cleaned_data["groups"])

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("users") and not data.get("groups") and not self.errors:
            raise forms.ValidationError("Name at least one user or group.")
        return data


class DecideOnBehalfForm(forms.Form):
    assignee = forms.ChoiceField(help_text="The assignee whose decision you record.")
    # Sending back for changes is the assignee's own act, never recorded on their behalf.
    outcome = forms.ChoiceField(
        choices=[(o.value, o.label) for o in DECISIONS], widget=forms.RadioSelect
    )
    comment = forms.CharField(
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="The assignee's words (required to reject when the request says so).",
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required: why you decide for them (e.g. “approved by phone, traveling”).",
    )

    def __init__(self, *args: Any, candidates: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].choices = [("", "—")] + [(n, n) for n in candidates]

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


class ClaimNoteForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Recorded on the event and shown to the claimant in the history.",
    )


class TakeOverClaimForm(ClaimNoteForm):
    note = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required: why you take the claim over (recorded).",
    )


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("approvals.view_approvalrequest")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DecisionInline(_ReadOnlyInline):
    model = Decision
    fields = [
        "at",
        "outcome",
        "assignee",
        "decided_by",
        "via_group",
        "channel",
        "comment",
        "reason",
    ]
    readonly_fields = fields
    ordering = ["at", "id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("assignee", "decided_by", "via_group")


class ActionTokenInline(_ReadOnlyInline):
    """Email links sent (only their hashes are stored; nothing here can act)."""

    model = ActionToken
    verbose_name_plural = "Email action links"
    fields = ["user", "purpose", "created_at", "expires_at", "used_at", "superseded_at"]
    readonly_fields = fields
    ordering = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("user")


@admin.action(description="Reassign (selected pending requests)…", permissions=["operate"])
def reassign_selected(
    modeladmin: ApprovalRequestAdmin, request: HttpRequest, queryset: QuerySet
) -> Any:
    return modeladmin.reassign_bulk(request, queryset)


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "title",
        "workflow",
        "business_key",
        "step_name",
        "round",
        "state_pill",
        "policy",
        "decision_count",
        "created_at",
        "due_at",
        "resolved_at",
        "status_page",
    ]
    list_filter = ["state", "policy", "workflow"]
    list_select_related = ["requester"]
    search_fields = ["title", "=business_key", "=workflow"]
    search_help_text = "Words of the title, or an exact business key or workflow."
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 50
    actions = [reassign_selected]
    inlines = [DecisionInline, ActionTokenInline]
    change_form_template = "admin/approvals/approvalrequest/change_form.html"
    change_list_template = "admin/approvals/approvalrequest/change_list.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "title",
                    "state_pill",
                    ("workflow", "business_key", "step_name"),
                    ("round", "max_rounds", "revisable"),
                    ("answered_by", "answered_at"),
                    "status_page",
                    "requester",
                    "assignees",
                    "claim_display",
                    ("policy", "quorum", "veto"),
                    ("reject_requires_comment", "allow_self_approval"),
                    "fields_pretty",
                ]
            },
        ),
        (
            "Times",
            {
                "fields": [
                    ("created_at", "due_at", "resolved_at"),
                    ("level", "reminders_sent", "last_reminded_at"),
                    ("next_reminder_at", "next_escalation_at"),
                ]
            },
        ),
    ]
    readonly_fields = [
        "title",
        "state_pill",
        "workflow",
        "business_key",
        "step_name",
        "round",
        "max_rounds",
        "revisable",
        "answered_by",
        "answered_at",
        "status_page",
        "requester",
        "assignees",
        "claim_display",
        "policy",
        "quorum",
        "veto",
        "reject_requires_comment",
        "allow_self_approval",
        "fields_pretty",
        "created_at",
        "due_at",
        "resolved_at",
        "level",
        "reminders_sent",
        "last_reminded_at",
        "next_reminder_at",
        "next_escalation_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(n_decisions=Count("decisions"))

    @admin.display(description="state", ordering="state")
    def state_pill(self, obj: ApprovalRequest) -> str:
        return pill(obj.state, obj.get_state_display())

    @admin.display(description="decisions", ordering="n_decisions")
    def decision_count(self, obj: ApprovalRequest) -> int:
        return getattr(obj, "n_decisions", 0)

    @admin.display(description="instance")
    def status_page(self, obj: ApprovalRequest) -> str:
        return format_html('<a href="{}">Status page&nbsp;→</a>', status_url(obj.instance_id))

    @admin.display(description="assigned to")
    def assignees(self, obj: ApprovalRequest) -> str:
        users = [u.get_username() for u in obj.assignee_users.all()]
        groups = [f"group {g.name}" for g in obj.assignee_groups.all()]
        return ", ".join(users + groups) or "—"

    @admin.display(description="claim")
    def claim_display(self, obj: ApprovalRequest) -> str:
        if not obj.claim_mode:
            return "no claims on this request"
        holder = selectors.claim_holder_name(obj)
        if holder is None:
            return f"unclaimed ({obj.claim_mode} claims)"
        expires = (
            f", expires if idle at {timezone.localtime(obj.claim_expires_at):%Y-%m-%d %H:%M %Z}"
            if obj.claim_expires_at
            else ""
        )
        return (
            f"claimed by {holder} since {timezone.localtime(obj.claimed_at):%Y-%m-%d %H:%M %Z}"
            f" ({obj.claim_mode}{expires})"
        )

    @admin.display(description="what the approver sees")
    def fields_pretty(self, obj: ApprovalRequest) -> str:
        return json_block(obj.fields)

    # -- operator actions ------------------------------------------------------------------
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


class ActiveDelegationFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("now", "Active now"), ("future", "Upcoming"), ("past", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "now":
            return queryset.filter(starts_at__lte=now, ends_at__gt=now)
        if self.value() == "future":
            return queryset.filter(starts_at__gt=now)
        if self.value() == "past":
            return queryset.filter(ends_at__lte=now)
        return queryset


@admin.register(Delegation)
class DelegationAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["user", "delegate", "starts_at", "ends_at", "status", "created_at"]
    list_select_related = ["user", "delegate"]
    list_filter = [ActiveDelegationFilter]
    search_fields = ["=user__username", "=delegate__username"]
    search_help_text = "An exact username (who delegated, or the delegate)."
    fields = ["user", "delegate", "starts_at", "ends_at", "created_at"]
    readonly_fields = fields

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    @admin.display(description="status")
    def status(self, obj: Delegation) -> str:
        now = timezone.now()
        if obj.starts_at > now:
            return pill("scheduled", "upcoming")
        if obj.ends_at > now:
            return pill("active", "active")
        return pill("ended", "ended")
